"""`attrilens bench inspect`'s entry point: which suite a model gets (`choose_suite`) and `run_benchmark`, which
runs it — the world suite (`world.py`) or the real-model suite (`real.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from attrilens.bench.patchscopes.real import run_real_benchmark
from attrilens.bench.patchscopes.world import run_world_benchmark
from attrilens.bench.report import Report
from attrilens.errors import AttrilensError

SUITES = ("world", "real")


def choose_suite(model: str | Path | None, world: Path | None, suite: str | None) -> str:
    """The suite to run: as asked, else `real` for a registered real model given without a world, else `world`."""
    from attrilens import models

    if suite is None:
        suite = "real" if model is not None and world is None and str(model) in models.MODELS else "world"
    if suite not in SUITES:
        raise AttrilensError(f"Unknown benchmark suite {suite!r}. Choose {' or '.join(SUITES)}.")
    if suite == "real" and world is not None:
        raise AttrilensError("The real suite reads CPython documentation and countryinfo facts, not a fact world. "
                             "Leave out --world, or pass --suite world.")
    if suite == "real" and model is None:
        raise AttrilensError("The real suite needs a real model. Pass e.g. --model smollm2-135m-instruct.")
    return suite


def run_benchmark(model: str | Path | None = None, world: Path | None = None, quick: bool = False,
                  lens_out: Path | None = None, suite: str | None = None, threads: int | None = None) -> Report:
    """Run the benchmark on a model (default: the demo target); `lens_out` saves the tuned lens trained here.

    Suite `world` (the default for the demo and local models): the model's fact world — next-token read-outs on
    its texts, attribute extraction on its facts, multi-hop, speed. Suite `real` (the default for a registered
    real model such as smollm2-135m-instruct): see `run_real_benchmark`.
    Tables: next_token (long form: method, layer, precision@1, surprisal, KL) and its layer × method pivots,
    then the suite's attribute tables, (world) multi_hop, and speed.
    """
    if threads is not None:
        if threads < 1:
            raise AttrilensError(f"threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    if choose_suite(model, world, suite) == "real":
        return run_real_benchmark(model, quick=quick, lens_out=lens_out)
    return run_world_benchmark(model, world, quick=quick, lens_out=lens_out)
