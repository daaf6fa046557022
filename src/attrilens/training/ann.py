"""FAISS indexes over an index's feature shards: exact ("flat") or approximate ("ivf-pq", "hnsw") inner-product search.

The kind and its parameters are recorded in the manifest ("faiss": {"file", "kind", "params", "approximate"}); a
search with an approximate kind fetches `rerank` × k candidates and scores them exactly from the shards, so the
reported scores are exact and only the set of hits is approximate (recall@k < 1 is possible: the trace says so).

- flat: `IndexFlatIP`, every row, exact.
- ivf-pq: `IndexIVFPQ`: nlist k-means cells (auto: a power of two near √N, at least 39 training rows per cell),
  each row stored as m bytes (nbits = 8 bits per sub-vector of d/m dims; auto: m = d/16); a query visits nprobe
  cells, and the rerank·k best candidates are re-scored exactly.
- hnsw: `IndexHNSWFlat`: a graph of M links per row (full fp32 rows), efConstruction when built, efSearch per query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attrilens.errors import AttrilensError
from attrilens.training.search import merge_topk
from attrilens.training.store import atomic_write

FAISS_KINDS = ("flat", "ivf-pq", "hnsw")
DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf-pq": {"nlist": "auto", "m": "auto", "nbits": 8, "nprobe": 32, "rerank": 10, "train_rows": "auto"},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128, "rerank": 1},
}
TRAIN_SEED = 0


def faiss_params(kind: str, n: int, dim: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of a FAISS index of `kind` for n rows of dim features: the defaults, `given` on top, checked."""
    if kind not in FAISS_KINDS:
        raise AttrilensError(f"Unknown FAISS kind {kind!r}. Use one of {', '.join(FAISS_KINDS)} (--faiss KIND).")
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULTS[kind]))
    if unknown:
        valid = ", ".join(DEFAULTS[kind]) or "none"
        raise AttrilensError(f"Unknown FAISS option(s) {', '.join(unknown)} for {kind}. Valid options: {valid}.")
    p = {**DEFAULTS[kind], **given}
    for key, v in p.items():
        if v != "auto" or key not in ("nlist", "m", "train_rows"):
            try:
                p[key] = int(v)
            except (TypeError, ValueError):
                raise AttrilensError(f"FAISS option {key} takes a positive integer, got {v!r}.") from None
            if p[key] < 1:
                raise AttrilensError(f"FAISS option {key} must be at least 1, got {v!r}.")
    if kind == "ivf-pq":
        if p["nlist"] == "auto":
            p["nlist"] = max(1, min(2 ** round(math.log2(math.sqrt(n))), n // 39))
        p["nlist"] = min(p["nlist"], n)
        if p["m"] == "auto":  # one byte per 16 dimensions (4096 → 256 bytes a row, 32× smaller than fp16)
            p["m"] = dim // 16 if dim % 16 == 0 else math.gcd(dim, 64)
        p["nprobe"] = min(p["nprobe"], p["nlist"])
        p["nbits"] = min(p["nbits"], max(1, int(math.log2(max(n, 2)))), 16)  # k-means needs ≥ 2^nbits rows
        if p["train_rows"] == "auto":  # 64 rows per IVF cell, 39 per PQ centroid (FAISS' minimum), all when fewer
            p["train_rows"] = min(n, max(64 * p["nlist"], 39 * 2 ** p["nbits"]))
        if dim % p["m"]:
            raise AttrilensError(f"FAISS ivf-pq option m={p['m']} must divide the feature size {dim}. Pass e.g. "
                                 f"--faiss-option m={math.gcd(dim, 64)}.")
    return p


def build_ann(out: Path, shards: Sequence[tuple[int, np.ndarray]], dim: int, kind: str = "flat",
              options: dict[str, Any] | None = None, name: str = "faiss.index") -> dict[str, Any]:
    """Write a FAISS index of the shards to out/name (atomically); return its manifest entry."""
    import faiss

    n = sum(a.shape[0] for _, a in shards)
    p = faiss_params(kind, n, dim, options)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)
        index.train(_training_rows(shards, n, p["train_rows"]))
    for _, arr in shards:
        for a in range(0, arr.shape[0], 16384):
            index.add(np.ascontiguousarray(arr[a : a + 16384], dtype=np.float32))
    atomic_write(out / name, lambda tmp: faiss.write_index(index, str(tmp)))
    return {"file": name, "kind": kind, "params": p, "approximate": kind != "flat", "metric": "inner product"}


def _training_rows(shards: Sequence[tuple[int, np.ndarray]], n: int, limit: int) -> np.ndarray:
    """A seeded sample of at most `limit` rows (all when fewer), fp32, for the k-means of IVF and PQ."""
    rows = np.sort(np.random.default_rng(TRAIN_SEED).permutation(n)[:limit])
    out = []
    for start, arr in shards:
        mine = rows[(rows >= start) & (rows < start + arr.shape[0])] - start
        out.append(np.asarray(arr[mine], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(out))


class AnnIndex:
    """A FAISS index file opened once: top-k and bottom-k by inner product, re-scored exactly when approximate."""

    def __init__(self, path: Path, entry: dict[str, Any] | str):
        import faiss

        if isinstance(entry, str):  # written before the kinds: an exact flat index
            entry = {"file": entry, "kind": "flat", "params": {}, "approximate": False}
        self.entry = entry
        file = path / entry["file"]
        if not file.is_file():
            raise AttrilensError(f"The FAISS index {file} is missing. Rebuild the index with --faiss KIND.")
        self.index = faiss.read_index(str(file))
        self.tune()

    def tune(self, **search: int) -> None:
        """Set search-time parameters (nprobe, ef_search, rerank) over the recorded ones (the benchmark's sweep)."""
        self.entry = {**self.entry, "params": {**self.entry["params"], **search}}
        p = self.entry["params"]
        if self.entry["kind"] == "ivf-pq":
            self.index.nprobe = p["nprobe"]
        elif self.entry["kind"] == "hnsw":
            self.index.hnsw.efSearch = p["ef_search"]

    @property
    def label(self) -> str:
        """How a result names this search, e.g. "faiss-ivf-pq (approximate)"."""
        return f"faiss-{self.entry['kind']}" + (" (approximate)" if self.entry["approximate"] else " (exact)")

    def search(self, q: np.ndarray, k: int, shards: Sequence[tuple[int, np.ndarray]] | None = None):
        """(top ids, scores, bottom ids, scores) of x·q; with shards, approximate candidates are re-scored exactly."""
        rerank = int(self.entry["params"].get("rerank", 1)) if shards is not None else 1
        kk = min(k * rerank, self.index.ntotal)
        q = np.ascontiguousarray(q, dtype=np.float32)[None]
        s, i = self.index.search(q, kk)
        s2, i2 = self.index.search(-q, kk)
        top, bot = (i[0][i[0] >= 0], s[0][i[0] >= 0]), (i2[0][i2[0] >= 0], -s2[0][i2[0] >= 0])
        if self.entry["approximate"] and shards is not None:
            top = (top[0], exact_scores(shards, top[0], q[0]))
            bot = (bot[0], exact_scores(shards, bot[0], q[0]))
        return merge_topk([(*top, *bot)], k)


def exact_scores(shards: Sequence[tuple[int, np.ndarray]], ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x·q in fp32 for the given rows, read from the memory-mapped shards."""
    out = np.zeros(len(ids), dtype=np.float64)
    for start, arr in shards:
        mine = np.nonzero((ids >= start) & (ids < start + arr.shape[0]))[0]
        if len(mine):
            out[mine] = np.asarray(arr[ids[mine] - start], dtype=np.float32) @ q.astype(np.float32)
    return out
