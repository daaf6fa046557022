"""`attrilens bench scale`: the training-data index past one machine — FAISS recall/latency, Ray build throughput,
and a cost model on paper for TrackStar's own setting.

- `ann_benchmark`: recall@10 against exact search and one-query latency of ivf-pq and hnsw (and flat/exact
  blocked search as the baseline) on synthetic features at d = 4096: unit rows drawn around cluster centres in a
  low-rank subspace plus isotropic noise (projected gradients are far from iid Gaussian: a few directions carry
  most of the energy, and similar examples cluster), fp16 shards on disk as an index stores them; the queries are
  fresh draws from the same distribution (not rows of the index).
- `build_benchmark`: examples/s of `build_index` locally and on Ray with 1 and 2 workers on the demo model and
  world, each in a fresh process; the Ray overhead split into cluster start, actor start (model load) and the rest.
- `cost_model`: FLOPs, storage, GPU-days and cluster size for 8 B parameters, 160 B tokens, d = 2^16, with every
  step of the arithmetic in the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.bench.report import Report, machine

# ---------------------------------------------------------------------- (a) FAISS recall and latency
# search-time settings measured on each built index (the first is the default; rerank=1 shows the raw PQ recall)
SEARCH_SWEEP = {"ivf-pq": [{}, {"rerank": 1}, {"nprobe": 8, "rerank": 1}, {"nprobe": 8}],
                "hnsw": [{}, {"ef_search": 32}]}
def synthetic_features(n: int, d: int, seed: int, *, clusters: int = 1000, rank: int = 64, noise: float = 0.5,
                       rows: int = 20000):
    """Yield fp16 blocks of unit rows: cluster centre + spread inside a rank-`rank` subspace + isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32) / np.sqrt(rank)
    centres = rng.standard_normal((clusters, rank)).astype(np.float32) * 2
    for a in range(0, n, rows):
        m = min(rows, n - a)
        z = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, rank), dtype=np.float32)
        x = z @ basis + noise * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d) * np.sqrt(rank)
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _exact_topk(shards: Sequence[tuple[int, np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row ids for a batch of queries (fp32 products, blocked)."""
    q = torch.from_numpy(queries.astype(np.float32))
    best_s = torch.full((len(queries), k), -np.inf)
    best_i = torch.zeros((len(queries), k), dtype=torch.long)
    for start, arr in shards:
        for a in range(0, arr.shape[0], 16384):
            s = torch.from_numpy(np.asarray(arr[a : a + 16384], dtype=np.float32)) @ q.T  # [rows, nq]
            cand_s = torch.cat([best_s, s.T], 1)
            cand_i = torch.cat([best_i, torch.arange(start + a, start + a + s.shape[0]).expand(len(queries), -1)], 1)
            best_s, o = cand_s.topk(k, dim=1)
            best_i = cand_i.gather(1, o)
    return best_i.numpy()


def ann_benchmark(ns: Sequence[int] = (100_000,), d: int = 4096, kinds: Sequence[str] = ("ivf-pq", "hnsw"),
                  n_queries: int = 100, k: int = 10, seed: int = 0, workdir: Path | None = None,
                  options: dict[str, dict[str, Any]] | None = None) -> Report:
    """Recall@k against exact search and query latency of FAISS kinds on synthetic clustered features."""
    import pandas as pd

    from attrilens.training.ann import AnnIndex, build_ann
    from attrilens.training.search import search_dot

    rows = []
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    root = Path(tmp.name)
    try:
        for n in ns:
            shards, start, fresh = [], 0, []
            half = n_queries // 2
            t0 = time.perf_counter()
            for i, block in enumerate(synthetic_features(n + half, d, seed)):
                keep = block[: max(0, n - start)]  # the last `half` rows are fresh queries, not in the index
                fresh.append(block[len(keep) :].copy())  # a view would keep every block in memory
                if len(keep):
                    path = root / f"n{n}-{i:05d}.npy"
                    np.save(path, keep)
                    shards.append((start, np.load(path, mmap_mode="c")))
                    start += len(keep)
            gen_s = time.perf_counter() - t0
            queries = np.concatenate([*fresh, _queries_near(shards, n_queries - half, seed)])
            truth = _exact_topk(shards, queries, k)
            lat = []
            for q in queries[:20]:
                t = time.perf_counter()
                search_dot(shards, torch.from_numpy(q.astype(np.float32)), k, bounded=True)
                lat.append(time.perf_counter() - t)
            rows.append({"N": n, "d": d, "kind": "exact (blocked, fp16)", "params": "", "build s": 0.0,
                         "index MB": n * d * 2 / 2**20, "recall@10": 1.0, "query ms (median)": 1e3 * np.median(lat),
                         "generate s": gen_s})
            for kind in kinds:
                out = root / f"{kind}-{n}"
                out.mkdir()
                t = time.perf_counter()
                entry = build_ann(out, shards, d, kind, (options or {}).get(kind))
                build_s = time.perf_counter() - t
                ann = AnnIndex(out, entry)
                for variant in SEARCH_SWEEP.get(kind, [{}]):
                    ann.tune(**{**entry["params"], **variant})
                    hits, lat = [], []
                    for qi, q in enumerate(queries):
                        t = time.perf_counter()
                        ids = ann.search(q.astype(np.float32), k, shards)[0]
                        lat.append(time.perf_counter() - t)
                        hits.append(len(set(ids.tolist()) & set(truth[qi].tolist())) / k)
                    params = ", ".join(f"{a}={b}" for a, b in ann.entry["params"].items())
                    rows.append({"N": n, "d": d, "kind": kind, "params": params, "build s": build_s,
                                 "index MB": (out / entry["file"]).stat().st_size / 2**20,
                                 "recall@10": float(np.mean(hits)), "query ms (median)": 1e3 * float(np.median(lat)),
                                 "generate s": gen_s})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                del ann
                (out / entry["file"]).unlink()
            for p in root.glob(f"n{n}-*.npy"):
                p.unlink()
    finally:
        tmp.cleanup()
    info = {"machine": machine(), "distribution": "unit rows: one of 1000 centres + N(0, I) in a rank-64 subspace "
            "+ isotropic noise (0.5 of the subspace energy), fp16; queries: half fresh draws, half index rows + noise",
            "queries": n_queries, "k": k, "latency": "one query at a time (top-k and bottom-k, exact re-scoring)",
            "faiss_threads": _faiss_threads()}
    return Report("scale-ann", {"FAISS recall@10 and latency": pd.DataFrame(rows)}, info,
                  header="# FAISS approximate search vs exact search")


def _queries_near(shards, n: int, seed: int) -> np.ndarray:
    """Rows of the index plus a little noise, re-normalised (queries that have near neighbours)."""
    rng = np.random.default_rng(seed + 2)
    total = sum(a.shape[0] for _, a in shards)
    out = []
    for r in np.sort(rng.choice(total, n, replace=False)):
        for start, arr in shards:
            if start <= r < start + arr.shape[0]:
                x = np.asarray(arr[r - start], dtype=np.float32)
                x = x + 0.05 * rng.standard_normal(x.shape[0]).astype(np.float32) / np.sqrt(x.shape[0]) * 8
                out.append(x / np.linalg.norm(x))
    return np.stack(out).astype(np.float16)


def _faiss_threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()


# ---------------------------------------------------------------------- (b) Ray build throughput
_BUILD_SCRIPT = r"""
import json, sys, time, os
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from attrilens.demo.paths import demo_model_dir, demo_world_dir
from attrilens.lm import LM
from attrilens.training.index import build_index
mode, workers, out, method = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
lm = LM.from_pretrained(demo_model_dir("target"))
ray_s = read_s = 0.0
if mode == "ray":
    import ray
    t = time.perf_counter()
    ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_s = time.perf_counter() - t
    from attrilens.training.distributed import read_corpus
    t = time.perf_counter()
    read_corpus(demo_world_dir() / "corpus.jsonl")
    read_s = time.perf_counter() - t
t = time.perf_counter()
idx = build_index(lm, demo_world_dir() / "corpus.jsonl", out, method=method, progress=False, shard_size=64,
                  ray="local" if mode == "ray" else None, ray_workers=workers or None,
                  eval_queries=demo_world_dir() / "queries.jsonl" if method == "trackstar" else None)
build_s = time.perf_counter() - t
import hashlib
digest = hashlib.sha256("".join(s["sha256"] for s in idx.manifest["shards"]).encode()).hexdigest()[:12]
print(json.dumps({"examples": len(idx), "dim": idx.manifest["dim"], "build_s": build_s, "ray_init_s": ray_s,
                  "read_s": read_s,
                  "shards_sha": digest, "threads": torch.get_num_threads()}))
"""


def build_benchmark(workers: Sequence[int] = (1, 2), method: str = "grad-dot", repeats: int = 1) -> Report:
    """Examples/s of the demo index build (503 blocks in shards of 64): local (1 and 2 torch threads) and Ray with 1
    and 2 one-thread workers; whether each run's shard files are the local 1-thread build's (a digest of their
    sha256s)."""
    import pandas as pd

    rows = []
    for mode, w, threads in [("local", 0, 1), ("local", 0, 2)] + [("ray", w, 1) for w in workers]:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, mode, str(w), out + "/idx", method,
                                    str(threads)],
                                   capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                wall = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-2000:])
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append({"path": f"local, {threads} thread{'s' * (threads > 1)}" if mode == "local"
                         else f"ray, {w} worker{'s' * (w > 1)} × 1 thread",
                         "examples": res["examples"], "dim": res["dim"], "build s": res["build_s"],
                         "examples/s": res["examples"] / res["build_s"], "ray init s": res["ray_init_s"],
                         "Ray Data read s (inside build s)": res["read_s"],
                         "process wall s": wall, "shards digest": res["shards_sha"],
                         "same shards as local 1 thread": res["shards_sha"] == rows[0]["shards digest"] if rows
                         else True})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return Report("scale-build", {f"{method} build on the demo model and world": pd.DataFrame(rows)},
                  {"machine": machine(), "method": method}, header="# Index build: local vs Ray")


# ---------------------------------------------------------------------- (c) cost model
def cost_model(params: float = 8e9, tokens: float = 160e9, d: int = 2**16, block_len: int = 2048,
               gpu: str = "H100 SXM", peak_flops: float = 989e12, mfu: float = 0.4, bytes_per_value: int = 2) -> Report:
    """TrackStar's setting on paper: every quantity with the arithmetic that gives it."""
    import pandas as pd

    examples = tokens / block_len
    fwd_bwd = 6 * params * tokens  # forward 2·N + backward 4·N per token (the cost of one training pass)
    # projection, factored per weight matrix (LoGra-style: the input activation and the output gradient of each
    # matrix are projected to √(d per matrix) each, then their outer product is summed over the block's tokens);
    # Llama-3-8B shapes: 32 layers × 7 matrices, Σ(in + out) per layer = 81,920
    matrices, side = 32 * 7, float(np.sqrt(d / (32 * 7)))
    in_out = 32 * 81_920
    proj_tokens = 2 * side * in_out * tokens
    proj_outer = 2 * matrices * side * side * tokens
    proj_dense = 2 * params * d * examples  # a dense d × N Gaussian projection of each example's gradient
    total = fwd_bwd + proj_tokens + proj_outer
    gpu_s = total / (peak_flops * mfu)
    storage = examples * d * bytes_per_value
    r_flops = 2 * examples * d * d  # Σ ΦᵀΦ over all examples
    eig = 9 * d**3  # symmetric eigendecomposition, ~9 d^3
    rows = [
        ("examples (blocks)", f"{tokens:.3g} tokens / {block_len} tokens per block", examples),
        ("forward+backward FLOPs", f"6 · {params:.3g} params · {tokens:.3g} tokens", fwd_bwd),
        ("projection FLOPs: activations and output gradients", f"2 · √({d}/{matrices}) = {side:.1f} · Σ(in+out) "
         f"{in_out:.3g} · {tokens:.3g} tokens", proj_tokens),
        ("projection FLOPs: per-token outer products", f"2 · {matrices} matrices · {side:.1f}² · {tokens:.3g} tokens",
         proj_outer),
        ("(a dense Gaussian projection instead, for scale)", f"2 · {params:.3g} · {d} · {examples:.3g} examples",
         proj_dense),
        ("R = Σ ΦᵀΦ FLOPs", f"2 · {examples:.3g} · {d}²", r_flops),
        ("R eigendecomposition FLOPs (one node)", f"≈ 9 · {d}³", eig),
        ("total featurising FLOPs", "forward+backward + factored projection", total),
        ("as training runs of the same model", f"{total:.3g} / {fwd_bwd:.3g}", total / fwd_bwd),
        (f"{gpu} GPU-seconds at {mfu:.0%} MFU", f"{total:.3g} / ({peak_flops:.3g} · {mfu})", gpu_s),
        (f"{gpu} GPU-days", f"{gpu_s:.3g} / 86400", gpu_s / 86400),
        ("GPUs to finish in one day", f"⌈{gpu_s / 86400:.3g}⌉", float(np.ceil(gpu_s / 86400))),
        ("feature storage, bytes", f"{examples:.3g} · {d} · {bytes_per_value} B (fp16)", storage),
        ("feature storage, TB", f"{storage:.3g} / 1e12", storage / 1e12),
        ("R in float64, GB", f"{d}² · 8 B", d * d * 8 / 1e9),
    ]
    frame = pd.DataFrame(rows, columns=["quantity", "arithmetic", "value"])
    return Report("scale-cost", {"TrackStar at 8B parameters, 160B tokens, d = 2^16": frame},
                  {"params": params, "tokens": tokens, "d": d, "block_len": block_len, "gpu": gpu,
                   "peak_flops": peak_flops, "mfu": mfu}, header="# Cost model on paper")


def run_benchmark(parts: Sequence[str] = ("ann", "build", "cost"), ns: Sequence[int] = (100_000,), d: int = 4096,
                  n_queries: int = 100, workers: Sequence[int] = (1, 2), method: str = "grad-dot",
                  kinds: Sequence[str] = ("ivf-pq", "hnsw")) -> list[Report]:
    """The parts of `attrilens bench scale` asked for, one Report each."""
    from attrilens.training.ann import FAISS_KINDS

    bad = sorted(set(kinds) - set(FAISS_KINDS))
    if bad:
        from attrilens.errors import AttrilensError

        raise AttrilensError(f"Unknown FAISS kind(s) {', '.join(bad)}. Use {', '.join(FAISS_KINDS)}.")
    out = []
    if "cost" in parts:
        out.append(cost_model())
    if "ann" in parts:
        out.append(ann_benchmark(ns, d, kinds, n_queries=n_queries))
    if "build" in parts:
        out.append(build_benchmark(workers, method))
    return out
