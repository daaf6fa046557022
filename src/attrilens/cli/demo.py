"""CLI verbs of the demo layer: `attrilens world`, `attrilens train`, `attrilens demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.loading import CORPUS_HELP, IdField, MaxNewTokens, TextField
from attrilens.cli.options import given_values, option_flag
from attrilens.cli.output import JsonFlag, emit_summary
from attrilens.errors import AttrilensError, check_output_dir
from attrilens.options import merge_values, parse_assignments, parse_texts

CaptureOption = option_flag("damping=0.1 (an option of the --capture-method)", "training")
# options of the captured method that are GradientCapture's own arguments
CAPTURE_ARGUMENTS = ("proj_dim", "seed", "allocation")


def capture_options(ctx: typer.Context, method: str, proj_dim: int | None, texts: list[str] | None) -> dict:
    """GradientCapture's keywords for `train --capture`: --capture-proj-dim and `--option` text typed by the fields
    of the captured method (its projection's proj_dim, seed, allocation are the capture's own arguments; the rest
    go in its `options`, which the capture checks)."""
    from attrilens.training.methods import TDA_METHODS

    typed = {}
    if texts:  # (without --option, the capture names an unknown or uncapturable method itself)
        cls = TDA_METHODS.get(method)
        typed = parse_texts(cls.Options, parse_assignments(texts), cls.option_owner())
    named = {"proj_dim": proj_dim or None} if given_values(ctx, {"capture_proj_dim": proj_dim}) else {}
    values = merge_values(named, typed)
    out: dict = {"proj_dim": "auto", **{k: values.pop(k) for k in CAPTURE_ARGUMENTS if k in values}}
    return {**out, "options": values} if values else out


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `world`, `train` and `demo` to the app, and `bench train` (the trainer's defaults on fresh worlds)."""

    @app.command()
    def world(
        out: Annotated[Path, typer.Option(help="Directory to write corpus.jsonl, queries.jsonl, episodes.jsonl, facts.jsonl, train.jsonl.")],
        seed: Annotated[int, typer.Option(help="Random seed: the same seed writes byte-identical files.")] = 0,
        as_json: JsonFlag = False,
    ) -> None:
        """Generate the synthetic fact world (entities, relations, documents, queries, reading episodes, copy lines)."""
        from attrilens.workflows.world import make_world

        check_output_dir(out)
        emit_summary(make_world(out, seed=seed), as_json)

    @app.command()
    def train(
        ctx: typer.Context,
        corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
        out: Annotated[Path, typer.Option(help="Output model directory (Hugging Face format + tokenizer + optimizer state).")],
        arch: Annotated[str, typer.Option(help="gpt2 or llama.")] = "llama",
        layers: Annotated[int, typer.Option(help="Decoder blocks.")] = 4,
        width: Annotated[int, typer.Option(help="Residual width.")] = 128,
        epochs: Annotated[int | None, typer.Option(help="Most passes over the corpus when training to a recall target "
                                                        "(default 10000; 1000 with --lora); with --target-recall 0 exactly this many "
                                                        "passes (default 100; 1 with --lora).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Sequences per optimizer step (default 4; 8 with --lora).")] = None,
        lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate (default 1e-2; with --lora 2e-3, "
                                                     "or 1e-3 with --target-recall 0).")] = None,
        max_minutes: Annotated[float | None, typer.Option(help="Time budget: with a recall target (default 30), the "
                                                              "run ends there at the latest (finished; from scratch "
                                                              "the learning rate decays over it; --lora keeps it "
                                                              "constant); with --target-recall 0, stop resumably "
                                                              "after this many minutes.")] = None,
        target_recall: Annotated[float | None, typer.Option(help="Train until this fraction of what it is given is "
                                                                 "recalled (greedy exact match): the --facts, else the "
                                                                 "documents, each when all of its own continuations "
                                                                 "are (its sentences' last words). Default 0.9; 0: a "
                                                                 "fixed number of epochs.")] = None,
        facts: Annotated[Path | None, typer.Option(help='JSONL of {"prompt","target"} facts to measure recall on during '
                                                        "training (default: facts.jsonl beside --corpus, as "
                                                        "`attrilens world` writes it).")] = None,
        seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
        tokenizer: Annotated[Path | None, typer.Option(help="Reuse this model directory's tokenizer (e.g. to train a proxy).")] = None,
        base: Annotated[str | None, typer.Option(help="Fine-tune this model instead of training from scratch: a "
                                                     "registered name (e.g. smollm2-135m-instruct) or a model "
                                                     "directory.")] = None,
        lora: Annotated[bool, typer.Option(help="With --base: LoRA fine-tuning via peft (r=8, alpha=32; saves adapter + AdamW state).")] = False,
        lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
        lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
        lora_targets: Annotated[str | None, typer.Option(help="Comma-separated module names LoRA adapts (default: "
                                                              "the MLP projections, e.g. gate_proj,up_proj,down_proj; "
                                                              "with --target-recall 0 the attention q_proj,v_proj; the "
                                                              "demo's recipe: q_proj,v_proj,o_proj,down_proj).")] = None,
        capture: Annotated[Path | None, typer.Option(help="Also write a training-data index here, captured from the "
                                                         "training's own backward pass: one row per training "
                                                         "sequence per step (open it with `attrilens trace`).")] = None,
        capture_method: Annotated[str, typer.Option(help="Method of the --capture index: grad-dot, grad-cos or trackstar (each step's rows corrected by the AdamW moments after its update; R fitted at the end).")] = "grad-dot",
        capture_proj_dim: Annotated[int | None, typer.Option(help="Projected features of the --capture index (default: "
                                                                  "as `attrilens index build`).")] = None,
        capture_eval_queries: Annotated[Path | None, typer.Option(help="JSONL queries {prompt,target} for a --capture "
                                                                       "trackstar index's R_eval.")] = None,
        option: CaptureOption = None,
        text_field: TextField = "text",
        id_field: IdField = "id",
    ) -> None:
        """Train a tiny GPT-2/Llama-style model (and its byte-level BPE tokenizer) on CPU, or LoRA-fine-tune --base,
        until it recalls what it is given (--target-recall of --facts or of the documents' own continuations), the
        --max-minutes budget or the --epochs cap ends it; resumable; training.json says why it stopped."""
        # unset options keep the defaults of whichever trainer runs (scratch: TrainConfig; --lora: finetune_lora)
        given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)) if v is not None}
        check_output_dir(out)
        cap = None
        if option and capture is None:
            raise AttrilensError("--option sets options of the captured index's method. Pass --capture DIR too, or "
                                 "drop --option.")
        if capture is not None:
            from attrilens.training.capture import GradientCapture

            check_output_dir(capture, "--capture")
            cap = GradientCapture(capture, method=capture_method, eval_queries=capture_eval_queries,
                                  **capture_options(ctx, capture_method, capture_proj_dim, option))
        if lora or base is not None:
            if base is None or not lora:
                raise AttrilensError("Fine-tuning needs both --base DIR and --lora. Pass both, or neither to train from scratch.")
            from attrilens.workflows.lora import finetune_lora
            from attrilens.workflows.trainer import stopping_defaults

            targets = [t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None
            if lora_targets is not None and not targets:
                raise AttrilensError("--lora-targets is empty. Pass module names such as q_proj,v_proj.")
            stopping = stopping_defaults(corpus, target_recall, facts, max_minutes)  # to 0.9 recall in 30 min
            print(str(finetune_lora(base, corpus, out, r=lora_r, alpha=lora_alpha, target_modules=targets, seed=seed,
                                    capture=cap, text_field=text_field, id_field=id_field, **stopping, **given)))
            return
        from attrilens.workflows.trainer import TrainConfig, stopping_defaults
        from attrilens.workflows.trainer import train as run_training

        stopping = stopping_defaults(corpus, target_recall, facts, max_minutes)  # to 0.9 recall in 30 min
        config = TrainConfig(corpus=corpus, out=out, arch=arch, layers=layers, width=width, seed=seed,
                             tokenizer=tokenizer, text_field=text_field, id_field=id_field, **stopping, **given)
        print(str(run_training(config, capture=cap)))

    @bench.command("train")
    def bench_train(
        minutes: Annotated[float | None, typer.Option(help="Time budget of each training run (default 7; 30 with "
                                                           "--lora, the CLI's default).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the first corpus (the others: seed+1, seed+2).")] = 2026,
        threads: Annotated[int, typer.Option(help="Torch threads per run (1 is fastest on a busy machine).")] = 1,
        lora: Annotated[bool, typer.Option(help="The LoRA regime: fine-tune --base on three small corpora (invented "
                                                "towns, town paragraphs, real capitals) and ask their questions "
                                                "through the chat template.")] = False,
        base: Annotated[str, typer.Option(help="With --lora: the model to fine-tune.")] = "smollm2-135m-instruct",
        facts: Annotated[bool, typer.Option(help="Scratch regime: train to the worlds' facts files instead of the "
                                                 "documents' own continuations.")] = False,
        shapes: Annotated[str | None, typer.Option(help="Comma-separated subset of the shapes (scratch: short,long,"
                                                        "wide,world; --lora: towns,town-paragraphs,capitals).")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the report here (train-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """`attrilens train` defaults on fresh corpora of several shapes: epochs, stop reason, what was learnt."""
        if out is not None:
            check_output_dir(out)
        chosen = [x.strip() for x in shapes.split(",") if x.strip()] if shapes else None
        if lora:
            from attrilens.bench.train_lora import run_lora_benchmark

            report = run_lora_benchmark(base=base, minutes=30.0 if minutes is None else minutes, seed=seed,
                                        threads=threads, shapes=chosen)
        else:
            from attrilens.bench.train import run_benchmark

            report = run_benchmark(minutes=7.0 if minutes is None else minutes, seed=seed, threads=threads,
                                   with_facts=facts, shapes=chosen)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Where to write report.html and the results' JSON.")] = Path("demo-out"),
        model: Annotated[str | None, typer.Option(help="Explain this model's own generations instead: a registered "
                                                      "name (`attrilens models list`) or a model directory.")] = None,
        tiny: Annotated[bool, typer.Option("--tiny", help="The offline tiny-model demo on the synthetic fact world "
                                                          "(seconds; no real model is fetched).")] = False,
        max_new_tokens: MaxNewTokens = 32,
        serve: Annotated[bool, typer.Option(help="Open the report in the local web app afterwards.")] = False,
    ) -> None:
        """Every lens on one story → report.html. Default: SmolLM2-135M-Instruct fine-tuned (shipped LoRA) on real
        capitals with planted misinformation — why does it give a wrong capital? (first run fetches and converts
        the model and builds a training-data index: minutes; later runs: under a minute)."""
        if max_new_tokens < 1:
            raise AttrilensError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
        if tiny and model is not None:
            raise AttrilensError("Pass one of --tiny and --model.")
        if tiny or model is not None:
            from attrilens.demo import run_demo

            report = run_demo(out, model=model, max_new_tokens=max_new_tokens)
        else:
            from attrilens.demo.story import run_story

            report = run_story(out, max_new_tokens=max_new_tokens)
        print(f"wrote {report}")
        if serve:
            from attrilens.app.server import serve as run_server

            run_server(report_dir=out)
