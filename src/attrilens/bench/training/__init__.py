"""Lens 2 benchmarks: fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every method.

Run `attrilens bench training [--model DIR --world DIR] [--quick] [--out DIR]`. The method rows come from the
registry (`TDA_METHODS`, each class's `benchmark_variants`). Without a model it uses the demo target model when
it exists, else trains (once, cached) a small Llama on a small fact world with the project's trainer, so that
facts are memorised and gold documents are known. `attrilens bench training --damping-sweep` runs TrackStar's
ridge sweep (`damping_sweep`) instead. `attrilens bench training --real` (or `--model smollm2-135m-instruct`)
runs `run_real_benchmark` on a downloaded model: country-fact statements with known gold documents, TrackStar
with second moments estimated from the corpus, projection fidelity against exact layer-by-layer products.

One module per benchmark — `toy` (`run_benchmark`), `damping` (`damping_sweep`), `real` (`run_real_benchmark`) —
and their shared parts: `fact_world` (the toy model, world and query sets), `tail_patch` (`TailPatcher`),
`fidelity` (projection fidelity), `speed` (featurisation and search timings), `real_corpus` (the real model's
facts and corpus); peak-RSS measurement is `attrilens.bench.measure`. The names are re-exported here.
"""

from attrilens.bench.measure import peak_rss_during
from attrilens.bench.training.damping import damping_sweep
from attrilens.bench.training.fact_world import (
    BENCH_CACHE,
    QUESTIONS,
    STATEMENTS,
    benchmark_query_sets,
    prepare_bench_model,
)
from attrilens.bench.training.fidelity import projection_fidelity, real_projection_fidelity
from attrilens.bench.training.real import REAL_BLOCK_LEN, REAL_MODEL, real_method_grid, run_real_benchmark
from attrilens.bench.training.real_corpus import completed_facts, real_fact_corpus
from attrilens.bench.training.speed import (
    featurisation_scaling,
    featurisation_speed,
    query_latency,
    real_featurisation_speed,
)
from attrilens.bench.training.tail_patch import TailPatcher, correction_scales, saved_or_estimated_patcher
from attrilens.bench.training.toy import method_grid, run_benchmark

__all__ = [
    "BENCH_CACHE", "QUESTIONS", "REAL_BLOCK_LEN", "REAL_MODEL", "STATEMENTS", "TailPatcher", "benchmark_query_sets",
    "completed_facts", "correction_scales", "damping_sweep", "featurisation_scaling", "featurisation_speed",
    "method_grid", "peak_rss_during", "prepare_bench_model", "projection_fidelity", "query_latency",
    "real_fact_corpus", "real_featurisation_speed", "real_method_grid", "real_projection_fidelity",
    "run_benchmark", "run_real_benchmark", "saved_or_estimated_patcher",
]
