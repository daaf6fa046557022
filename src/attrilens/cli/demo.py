"""CLI verbs of the demo layer: `attrilens world`, `attrilens train`, `attrilens demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.loading import MaxNewTokens
from attrilens.cli.output import JsonFlag, emit_summary
from attrilens.errors import AttrilensError, check_output_dir


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `world`, `train` and `demo` to the app (the demo layer has no benchmark of its own)."""

    @app.command()
    def world(
        out: Annotated[Path, typer.Option(help="Directory to write corpus.jsonl, queries.jsonl, episodes.jsonl, facts.jsonl, train.jsonl.")],
        seed: Annotated[int, typer.Option(help="Random seed: the same seed writes byte-identical files.")] = 0,
        as_json: JsonFlag = False,
    ) -> None:
        """Generate the synthetic fact world (entities, relations, documents, queries, reading episodes, copy lines)."""
        from attrilens.demo.world import make_world

        check_output_dir(out)
        emit_summary(make_world(out, seed=seed), as_json)

    @app.command()
    def train(
        corpus: Annotated[Path, typer.Option(help='JSONL file with one {"id","text"} document per line.')],
        out: Annotated[Path, typer.Option(help="Output model directory (Hugging Face format + tokenizer + optimizer state).")],
        arch: Annotated[str, typer.Option(help="gpt2 or llama.")] = "llama",
        layers: Annotated[int, typer.Option(help="Decoder blocks.")] = 4,
        width: Annotated[int, typer.Option(help="Residual width.")] = 128,
        epochs: Annotated[int | None, typer.Option(help="Passes over the corpus (default 100 from scratch: see docs/benchmarks.md for "
                                                        "what a 480-fact corpus reaches; 1 with --lora).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Sequences per optimizer step (default 4; 8 with --lora).")] = None,
        lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate (default 1e-2; 1e-3 with --lora).")] = None,
        max_minutes: Annotated[float | None, typer.Option(help="Stop (and save everything) after this many minutes.")] = None,
        seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
        tokenizer: Annotated[Path | None, typer.Option(help="Reuse this model directory's tokenizer (e.g. to train a proxy).")] = None,
        base: Annotated[Path | None, typer.Option(help="Fine-tune this model directory instead of training from scratch.")] = None,
        lora: Annotated[bool, typer.Option(help="With --base: LoRA fine-tuning via peft (r=8, alpha=32; saves adapter + AdamW state).")] = False,
        lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
        lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
        capture: Annotated[Path | None, typer.Option(help="Also write a training-data index here, captured from the "
                                                         "training's own backward pass: one row per training "
                                                         "sequence per step (open it with `attrilens trace`).")] = None,
        capture_method: Annotated[str, typer.Option(help="Method of the --capture index: grad-dot or grad-cos.")] = "grad-dot",
        capture_proj_dim: Annotated[int | None, typer.Option(help="Projected features of the --capture index (default: "
                                                                  "as `attrilens index build`).")] = None,
    ) -> None:
        """Train a tiny GPT-2/Llama-style model (and its byte-level BPE tokenizer) on CPU; resumable. With --base --lora: LoRA fine-tune."""
        # unset options keep the defaults of whichever trainer runs (scratch: TrainConfig; --lora: finetune_lora)
        given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)) if v is not None}
        check_output_dir(out)
        cap = None
        if capture is not None:
            from attrilens.training.capture import GradientCapture

            check_output_dir(capture, "--capture")
            cap = GradientCapture(capture, method=capture_method,
                                  proj_dim="auto" if capture_proj_dim is None else capture_proj_dim or None)
        if lora or base is not None:
            if base is None or not lora:
                raise AttrilensError("Fine-tuning needs both --base DIR and --lora. Pass both, or neither to train from scratch.")
            from attrilens.demo.lora import finetune_lora

            print(str(finetune_lora(base, corpus, out, r=lora_r, alpha=lora_alpha, seed=seed, capture=cap, **given)))
            return
        from attrilens.demo.trainer import TrainConfig
        from attrilens.demo.trainer import train as run_training

        config = TrainConfig(corpus=corpus, out=out, arch=arch, layers=layers, width=width, max_minutes=max_minutes,
                             seed=seed, tokenizer=tokenizer, **given)
        print(str(run_training(config, capture=cap)))

    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Where to write report.html and the results' JSON.")] = Path("demo-out"),
        model: Annotated[str | None, typer.Option(help="Explain this model instead of the shipped tiny one: a registered "
                                                      "name (`attrilens models list`) or a model directory.")] = None,
        max_new_tokens: MaxNewTokens = 32,
        serve: Annotated[bool, typer.Option(help="Open the report in the local web app afterwards.")] = False,
    ) -> None:
        """Every lens on one model's own generations → report.html (default: the shipped tiny models, offline)."""
        from attrilens.demo import run_demo

        if max_new_tokens < 1:
            raise AttrilensError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
        report = run_demo(out, model=model, max_new_tokens=max_new_tokens)
        print(f"wrote {report}")
        if serve:
            from attrilens.server import serve as run_server

            run_server(report_dir=out)
