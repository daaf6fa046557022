"""Exact search over memory-mapped feature shards: blocked scoring, per-block top-k then a merge (FAISS: ann.py).

Shards are streamed in blocks of rows, so memory stays flat whatever the corpus size; every block keeps its own
top-k and bottom-k and the merge of those is the exact answer (equal scores are ordered by row, but which of
several equal scores at the k-th place is kept is not specified).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from attrilens.errors import AttrilensError

ScoreStream = Iterator[tuple[int, np.ndarray]]  # (first row, scores of the rows from there)


def finite_scores(stream: ScoreStream, where: str) -> ScoreStream:
    """The stream unchanged, or an error naming the first non-finite score's row: a NaN or Inf comes from a damaged
    shard and must never be ranked."""
    for start, scores in stream:
        bad = ~np.isfinite(scores)
        if bad.any():
            row = start + int(np.nonzero(bad)[0][0])
            raise AttrilensError(f"{where} gives {int(bad.sum())} non-finite scores (NaN or Inf; first at block {row}): "
                                 "a shard is damaged. Check it with `attrilens trace --verify`, or rebuild the index.")
        yield start, scores


def topk_merge(scores_iter, n_total: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k and bottom-k over streamed (row offset, scores) blocks: per-block selection, then a merge."""
    best_i, best_s, worst_i, worst_s = [], [], [], []
    for offset, s in scores_iter:
        kk = min(k, len(s))
        if kk == 0:
            continue
        top = np.argpartition(-s, kk - 1)[:kk]
        bot = np.argpartition(s, kk - 1)[:kk]
        best_i.append(top + offset)
        best_s.append(s[top])
        worst_i.append(bot + offset)
        worst_s.append(s[bot])
    return merge_topk(list(zip(best_i, best_s, worst_i, worst_s, strict=True)), k)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], k: int):
    """Merge per-block (top ids, top scores, bottom ids, bottom scores) into the overall top-k and bottom-k (equal
    scores ordered by row): the reduce step of the blocked and the distributed search."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        e = np.zeros(0)
        return e.astype(int), e, e.astype(int), e
    bi, bs, wi, ws = (np.concatenate(x) for x in zip(*parts, strict=True))
    o = np.lexsort((bi, -bs))[:k]
    w = np.lexsort((wi, ws))[:k]
    return bi[o], bs[o], wi[w], ws[w]


def iter_chunks(shards: Sequence[tuple[int, np.ndarray]], rows: int = 16384, *, keep_dtype: bool = False):
    """Stream (row offset, tensor) blocks of memory-mapped shards [(first row, array)], fp32 unless keep_dtype."""
    for start, arr in shards:
        for a in range(0, arr.shape[0], rows):
            x = torch.from_numpy(arr[a : a + rows])  # copy-on-write memmap: no copy until converted
            yield start + a, (x if keep_dtype else x.float())


def dot_stream(shards: Sequence[tuple[int, np.ndarray]], q: torch.Tensor, *, bounded: bool = False,
               rows: int = 16384) -> ScoreStream:
    """(offset, x·q) per block. fp16 shards with |score| ≤ 1 (unit-norm features) multiply in fp16 directly
    (fp32 accumulation, ~1e-4 absolute rounding of the scores), which reads each byte once; otherwise fp32."""
    half = bounded and all(a.dtype == np.float16 for _, a in shards)
    qq = q.half() if half else q.float()
    for o, x in iter_chunks(shards, rows, keep_dtype=half):
        yield o, (x @ qq).float().numpy()


def search_dot(shards: Sequence[tuple[int, np.ndarray]], q: torch.Tensor, k: int, *, bounded: bool = False,
               rows: int = 16384):
    """Exact blocked top-k / bottom-k of x·q over memory-mapped shards (top-k per block, then merge)."""
    n = sum(a.shape[0] for _, a in shards)
    return topk_merge(dot_stream(shards, q, bounded=bounded, rows=rows), n, k)


AGGREGATES = ("mean", "median")


def aggregate_checkpoints(per: torch.Tensor, how: str) -> torch.Tensor:
    """Scores [N, checkpoints] → [N]: mean, or median (of an even count: the mean of the two middle values)."""
    if per.shape[1] == 1:
        return per[:, 0]
    return per.mean(1) if how == "mean" else per.quantile(0.5, dim=1)


def checkpoint_dot_stream(shards: Sequence[tuple[int, np.ndarray]], q: torch.Tensor, n_blocks: int, how: str,
                          rows: int = 16384) -> ScoreStream:
    """(offset, scores) for features made of `n_blocks` checkpoint blocks side by side: x·q per block, then the
    mean or median over the blocks; one block is a plain dot product."""
    q = q.float()
    if n_blocks == 1:
        yield from dot_stream(shards, q, rows=rows)
        return
    bd = q.shape[0] // n_blocks
    for offset, x in iter_chunks(shards, rows):
        per = torch.stack([x[:, c * bd : (c + 1) * bd] @ q[c * bd : (c + 1) * bd] for c in range(n_blocks)], dim=1)
        yield offset, aggregate_checkpoints(per, how).numpy()
