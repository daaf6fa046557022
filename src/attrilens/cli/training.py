"""CLI verbs of lens 2: `attrilens index build`, `attrilens trace`, `attrilens bench training`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from attrilens.errors import AttrilensError
from attrilens.lm import LM


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AttrilensError(f"{what} must be comma-separated integers like 0,2,3, got {text!r}.") from None


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the training-data attribution verbs to the CLI."""
    index_app = typer.Typer(help="Training-data attribution index: featurise a corpus once, query it many times.",
                            no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(
        model: Annotated[Path, typer.Option(help="Model directory (or LoRA adapter directory for datainf).")],
        corpus: Annotated[Path, typer.Option(help='JSONL corpus, one {"id","text"} document per line.')],
        out: Annotated[Path, typer.Option(help="Index directory (created; an unfinished build there is resumed).")],
        method: Annotated[str, typer.Option(help="trackstar|datainf|tracin|grad-dot|grad-cos|bm25.")] = "trackstar",
        proj_dim: Annotated[int, typer.Option(help="Projected features per checkpoint (0 = no projection).")] = 4096,
        eval_queries: Annotated[Path | None, typer.Option(help="JSONL queries {prompt,target} for TrackStar's R_eval.")] = None,
        block_len: Annotated[int, typer.Option(help="Tokens per training block.")] = 128,
        shard_size: Annotated[int, typer.Option(help="Blocks per shard file.")] = 1024,
        batch_size: Annotated[int, typer.Option(help="Examples per backward pass.")] = 16,
        dtype: Annotated[str, typer.Option(help="float16 or float32 feature shards.")] = "float16",
        seed: Annotated[int, typer.Option(help="Projection seed.")] = 0,
        allocation: Annotated[str, typer.Option(help="Split of --proj-dim over the weights: proportional (to each "
                                                     "weight's size) or equal (LoGra's one side length).")] = "proportional",
        lam: Annotated[float | None, typer.Option(help="TrackStar λ (default: eigenvalue-crossing rule).")] = None,
        damping: Annotated[float, typer.Option(help="TrackStar ridge on R, a fraction of its mean non-zero eigenvalue "
                                                    "(smaller: fact retrieval; larger: one-step influence).")] = 1e-2,
        no_correction: Annotated[bool, typer.Option(help="TrackStar without the Adam second-moment correction.")] = False,
        no_r: Annotated[bool, typer.Option(help="TrackStar without R^-1/2.")] = False,
        no_unit_norm: Annotated[bool, typer.Option(help="TrackStar without unit normalisation.")] = False,
        aggregate: Annotated[str, typer.Option(help="TracIn / DataInf aggregation over checkpoints: mean or median.")] = "mean",
        use_faiss: Annotated[bool, typer.Option("--faiss", help="Also write an exact FAISS inner-product index.")] = False,
        threads: Annotated[int | None, typer.Option(help="torch threads (1 is fastest on a busy 2-core machine).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON only.")] = False,
    ) -> None:
        """Featurise a training corpus into an on-disk index (resumable, atomic per shard)."""
        from attrilens.training.index import build_index

        if threads is not None:
            import torch

            if threads < 1:
                raise AttrilensError(f"--threads must be at least 1, got {threads}.")
            torch.set_num_threads(threads)

        lm = LM.from_pretrained(model)
        idx = build_index(lm, corpus, out, method=method, proj_dim=proj_dim or None, model_dir=model,
                          eval_queries=eval_queries, block_len=block_len, shard_size=shard_size, batch_size=batch_size,
                          dtype=dtype, seed=seed, allocation=allocation, lam=lam, damping=damping,
                          correction=not no_correction, use_r=not no_r, unit_norm=not no_unit_norm, aggregate=aggregate,
                          use_faiss=use_faiss, progress=not as_json)
        m = idx.manifest
        summary = {"index": str(out), "method": m["method"], "examples": len(idx), "dim": m.get("dim", 0),
                   "shards": len(m.get("shards", [])), "build_seconds": m.get("build_seconds"),
                   "lambda": m.get("lambda")}
        print(json.dumps(summary, indent=None if as_json else 2))

    @app.command()
    def trace(
        index: Annotated[Path, typer.Option(help="Index directory written by `attrilens index build`.")],
        prompt: Annotated[str, typer.Option(help="The prompt.")],
        target: Annotated[str | None, typer.Option(help="The response to attribute (teacher-forced).")] = None,
        generate: Annotated[bool, typer.Option(help="Attribute the model's own greedy response instead.")] = False,
        tokens: Annotated[str | None, typer.Option(help="Only these response token indices count, e.g. 0,1.")] = None,
        span: Annotated[str | None, typer.Option(help="Only response tokens overlapping this character span start,end.")] = None,
        top_k: Annotated[int, typer.Option(help="Proponents and opponents to return.")] = 10,
        model: Annotated[Path | None, typer.Option(help="Model directory (default: the one the index was built with).")] = None,
        neighbours: Annotated[bool, typer.Option(help="Include the neighbouring blocks' texts.")] = False,
        use_faiss: Annotated[bool, typer.Option("--faiss", help="Search with the index's FAISS index.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print only the result JSON.")] = False,
    ) -> None:
        """Top-k training examples that support (and oppose) a response, from an index."""
        from attrilens.cli.output import emit
        from attrilens.training.index import TrainingIndex

        mpath = index / "manifest.json"
        if not mpath.is_file():
            raise AttrilensError(f"{index} is not an attrilens index (no manifest.json). Build one with "
                                 "`attrilens index build`.")
        manifest = json.loads(mpath.read_text())
        model_dir = model or manifest.get("model_dir") or manifest["model"]["name"]
        if not model_dir or not Path(model_dir).is_dir():
            raise AttrilensError(f"The model the index was built with ({model_dir}) is not on disk. Pass --model DIR.")
        span_t = _parse_ints(span, "--span")
        if span_t is not None and len(span_t) != 2:
            raise AttrilensError(f"--span takes two integers start,end, got {span!r}.")
        lm = LM.from_pretrained(model_dir)
        idx = TrainingIndex.open(index, lm, model_dir=model_dir)
        result = idx.trace(prompt, target=target, generate=generate, tokens=_parse_ints(tokens, "--tokens"),
                           span=tuple(span_t) if span_t else None, top_k=top_k, neighbours=neighbours,
                           use_faiss=use_faiss)
        emit(result, as_json)

    @bench.command("training")
    def bench_training(
        model: Annotated[Path | None, typer.Option(help="Model directory (default: the demo target model).")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact world directory (default: the demo world).")] = None,
        quick: Annotated[bool, typer.Option(help="Fewer queries and dimensions (minutes, not tens of minutes).")] = False,
        out: Annotated[Path | None, typer.Option(help="Also write the tables as JSON here.")] = None,
    ) -> None:
        """Fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every method."""
        from attrilens.bench.training import run_benchmark, write_tables

        write_tables(run_benchmark(model=model, world=world, quick=quick), out)
