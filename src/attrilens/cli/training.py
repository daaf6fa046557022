"""CLI verbs of lens 2's benchmarks: `attrilens bench capture | training | misinfo | verbatim | scale` (the index
verbs are `cli/index.py` and `cli/trace.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.loading import MODEL_HELP
from attrilens.cli.output import JsonFlag
from attrilens.errors import AttrilensError, check_output_dir
from attrilens.models import resolve_model
from attrilens.training.methods import TDA_METHODS


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the training-data attribution benchmarks to the bench group."""

    @bench.command("capture")
    def bench_capture(
        steps: Annotated[int, typer.Option(help="Training steps per run.")] = 20,
        repeats: Annotated[int, typer.Option(help="Interleaved (plain, captured) pairs per setting.")] = 2,
        lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Also the LoRA trainer (default on).")] = True,
        lora_steps: Annotated[int, typer.Option(help="LoRA training steps per run (its steps are short).")] = 100,
        proj_dim: Annotated[int | None, typer.Option(help="Projected features of the captured index (default: "
                                                          "as `attrilens index build`).")] = None,
        method: Annotated[str, typer.Option(help="Captured method: grad-dot, grad-cos or trackstar.")] = "grad-dot",
        out: Annotated[Path | None, typer.Option(help="Also write the report here (capture-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Training-time overhead of capturing index features during training (tiny-model and LoRA trainers)."""
        from attrilens.bench import capture as bench_capture_mod

        if out is not None:
            check_output_dir(out)
        report = bench_capture_mod.run_benchmark(steps=steps, repeats=repeats, lora=lora, proj_dim=proj_dim,
                                                 method=method, lora_steps=lora_steps)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("training")
    def bench_training(
        model: Annotated[str | None, typer.Option(help="Model directory trained on --world (default: the demo target "
                                                      "model), or a registered real model (e.g. "
                                                      "smollm2-135m-instruct), which runs the real-model benchmark "
                                                      "on country facts.")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact world directory (default: the demo world).")] = None,
        real: Annotated[bool, typer.Option("--real", help="The real-model benchmark (default model "
                                                          "smollm2-135m-instruct): gold retrieval on country facts, "
                                                          "tail-patch, projection fidelity at 2^12..2^16, fast vs "
                                                          "vmap speed, build s/document and peak RSS.")] = False,
        quick: Annotated[bool, typer.Option(help="Fewer queries and dimensions (minutes, not tens of minutes).")] = False,
        damping_sweep: Annotated[bool, typer.Option("--damping-sweep", help="Run TrackStar's ridge sweep (damping × λ rule × d) "
                                                         "instead of the method benchmark.")] = False,
        sweep_dim: Annotated[list[int] | None, typer.Option(help="Projection size of the ridge sweep (repeatable; "
                                                                 "default 4096 and 65536, --quick: 4096).")] = None,
        sweep_damping: Annotated[list[float] | None, typer.Option(help="Damping of the ridge sweep (repeatable; "
                                                                       "default 0.001 0.01 0.1 1).")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the report here (training-bench.md and .json; training-real-bench.* with --real).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every registered method."""
        from attrilens.bench import training as bench_mod
        from attrilens.models import MODELS

        if real or (model in MODELS and world is None):
            if damping_sweep:
                raise AttrilensError("--damping-sweep runs on a model trained on a fact world, not with --real. "
                                     "Pass one of them.")
            report = bench_mod.run_real_benchmark(model or bench_mod.REAL_MODEL, quick=quick)
        elif damping_sweep:
            n_queries, n_tail = (40, 15) if quick else (180, 40)
            dims = tuple(sweep_dim or ([4096] if quick else [4096, 65536]))
            report = bench_mod.damping_sweep(Path(model) if model else None, world, dims=dims, n_queries=n_queries,
                                             n_tail=n_tail, dampings=tuple(sweep_damping or (1e-3, 1e-2, 0.1, 1.0)))
        else:
            report = bench_mod.run_benchmark(model=Path(model) if model else None, world=world, quick=quick)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("misinfo")
    def bench_misinfo(
        run: Annotated[Path | None, typer.Option(help="A run of `python -m attrilens.demo.misinfo_build` (default: "
                                                     "the shipped story assets).")] = None,
        work: Annotated[Path | None, typer.Option(help="Where the indexes (and curation retrains) go; reused when "
                                                      "rerun (default: under the attrilens cache).")] = None,
        n_correct: Annotated[int, typer.Option(help="Correctly answered clean facts scored beside the wrong "
                                                    "answers.")] = 20,
        curation: Annotated[bool, typer.Option("--curation", help="Also run the curation benchmark: per method "
                                                                  "remove the top-k proponents of every wrong "
                                                                  "answer, retrain, re-ask (one retrain each: "
                                                                  "minutes).")] = False,
        k: Annotated[int, typer.Option(help="Proponents removed per wrong answer (--curation).")] = 4,
        out: Annotated[Path | None, typer.Option(help="Also write the report(s) here (misinfo-bench.*, "
                                                     "curation-bench.*).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """The misinformation story: recall/MRR of the planted documents behind each wrong answer (and of the true
        ones behind right answers), label mix and tail-patch per method; with --curation, fixes vs collateral."""
        from attrilens.bench.misinfo import run_curation_benchmark, run_misinfo_benchmark

        if n_correct < 0 or k < 1:
            raise AttrilensError(f"--n-correct must be ≥ 0 and --k ≥ 1, got {n_correct} and {k}.")
        reports = [run_misinfo_benchmark(run, work, n_correct=n_correct)]
        if curation:
            reports.append(run_curation_benchmark(run, work, k=k))
        for report in reports:
            print(report.to_json() if as_json else report.to_text())
            if out is not None:
                report.write(out)

    @bench.command("verbatim")
    def bench_verbatim(
        quick: Annotated[bool, typer.Option(help="Only the 10^6-token corpus.")] = False,
        size: Annotated[list[int] | None, typer.Option(help="Corpus size in tokens (repeatable; default 10^6, "
                                                            "10^7 and 10^8).")] = None,
        responses: Annotated[int, typer.Option(help="Responses traced per size.")] = 20,
        min_len: Annotated[int, typer.Option(help="Shortest span in tokens.")] = 8,
        model: Annotated[str | None, typer.Option(help=f"Model whose tokenizer indexes the corpus (default: the "
                                                      f"demo target model). {MODEL_HELP}")] = None,
        workdir: Annotated[Path | None, typer.Option(help="Where the temporary indexes go (default: the system "
                                                          "temporary folder).")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the report here (verbatim-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Verbatim span tracing: index build tokens/s, bytes/token, trace latency p50/p95 by corpus size."""
        from attrilens.bench import verbatim as bench_verbatim_mod

        if responses < 1 or min_len < 1 or any(s < 1 for s in size or []):
            raise AttrilensError("--responses, --min-len and --size must be positive. Pass positive integers.")
        if workdir is not None:
            check_output_dir(workdir, "--workdir")
            workdir.mkdir(parents=True, exist_ok=True)
        report = bench_verbatim_mod.run_benchmark(tuple(size) if size else None, quick=quick, n_responses=responses,
                                                  min_len=min_len, workdir=workdir,
                                                  model=resolve_model(model) if model else None)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("scale")
    def bench_scale(
        part: Annotated[list[str] | None, typer.Option(help="Which parts (repeatable): ann (FAISS recall@10 and "
                                                           "latency), build (local vs Ray examples/s), cost (the "
                                                           "cost model on paper). Default: all three.")] = None,
        n: Annotated[list[int] | None, typer.Option(help="ann: index sizes N (repeatable; default 100000).")] = None,
        dim: Annotated[int, typer.Option(help="ann: feature size d.")] = 4096,
        kind: Annotated[list[str] | None, typer.Option(help="ann: FAISS kinds (repeatable; default ivf-pq hnsw).")] = None,
        queries: Annotated[int, typer.Option(help="ann: queries per N.")] = 100,
        workers: Annotated[list[int] | None, typer.Option(help="build: Ray worker counts (repeatable; default 1 2).")] = None,
        method: Annotated[str, typer.Option(help="build: the method of the demo index.")] = "grad-dot",
        out: Annotated[Path | None, typer.Option(help="Also write each report here (scale-*-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """The index past one machine: FAISS recall and latency, Ray build throughput, TrackStar's cost on paper."""
        from attrilens.bench import scale

        parts = part or ["ann", "build", "cost"]
        bad = sorted(set(parts) - {"ann", "build", "cost"})
        if bad:
            raise AttrilensError(f"Unknown --part {', '.join(bad)}. Use ann, build or cost.")
        if any(x < 1 for x in (n or [])) or dim < 1 or queries < 2:
            raise AttrilensError("--n and --dim must be positive and --queries at least 2.")
        for report in scale.run_benchmark(parts, ns=n or [100_000], d=dim, n_queries=queries,
                                          kinds=kind or ["ivf-pq", "hnsw"],
                                          workers=workers or [1, 2], method=TDA_METHODS.get(method).name):
            print(report.to_json() if as_json else report.to_text())
            if out is not None:
                report.write(out)
