"""What each step of a scratch run trains on, and at which rate: the per-epoch document orders packed into batches
(drawn lazily and seeded, so a run and its resumption see the same ones), a batch as tensors, and the learning-rate
schedule (linear warmup, then a cosine decay)."""

from __future__ import annotations

import math
from bisect import bisect_right

import torch

from attrilens.workflows.trainer.config import TrainConfig


def epoch_rows(lengths: list[int], order: list[int], seq_len: int) -> list[list[int]]:
    """Pack whole documents (in ``order``) into rows of at most ``seq_len`` tokens, next-fit."""
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and used + lengths[i] > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        rows.append(cur)
    return rows


class EpochPlan:
    """Per-epoch document permutations and the batches (lists of rows of document indices), drawn lazily epoch by
    epoch (a run and its resumption see the same ones) up to the ``config.epochs`` epochs."""

    def __init__(self, config: TrainConfig, lengths: list[int]):
        self.config, self.lengths = config, lengths
        self.orders: list[list[int]] = []
        self.batches: list[list[list[int]]] = []
        self.starts: list[int] = []  # first step of each epoch drawn

    def _add_epoch(self) -> None:
        """Draw the next epoch's permutation and its batches."""
        c, epoch = self.config, len(self.orders)
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        if epoch < c.curriculum_epochs:
            perm = [i for i in perm if self.lengths[i] <= c.curriculum_max_tokens] or perm
        self.orders.append(perm)
        self.starts.append(len(self.batches))
        rows = epoch_rows(self.lengths, perm, c.seq_len) if c.packing == "packed" else [[i] for i in perm]
        self.batches += [rows[b : b + c.batch_size] for b in range(0, len(rows), c.batch_size)]

    def has(self, step: int) -> bool:
        """Whether the run has a step ``step`` (drawing epochs as needed)."""
        while step >= len(self.batches) and len(self.orders) < self.config.epochs:
            self._add_epoch()
        return step < len(self.batches)

    def total(self) -> int:
        """Steps of all ``epochs`` epochs (draws them all)."""
        while len(self.orders) < self.config.epochs:
            self._add_epoch()
        return len(self.batches)

    def epoch_of(self, step: int) -> int:
        """The epoch (0-based) that step ``step`` belongs to (drawn already)."""
        return max(0, bisect_right(self.starts, step) - 1)

    def epochs_done(self, steps: int) -> float:
        """Epochs completed after ``steps`` steps, with the fraction of the current one."""
        if steps <= 0 or not self.starts:
            return 0.0
        e = self.epoch_of(steps - 1)
        end = self.starts[e + 1] if e + 1 < len(self.starts) else len(self.batches)
        return e + (steps - self.starts[e]) / max(1, end - self.starts[e])


def collate(rows: list[list[int]], docs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """A batch as (input_ids, attention_mask, labels): each row's documents concatenated, padded on the right, the
    loss masked (-100) on the padding."""
    seqs = [[t for i in row for t in docs[i]] for row in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def lr_at(config: TrainConfig, step: int, total: int, frac: float | None = None) -> float:
    """Linear warmup, then cosine from lr to lr*min_lr_ratio over the run's progress ``frac`` (default step/total)."""
    warm = min(config.warmup_steps, max(1, total // 10))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm) if frac is None else frac
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cos)
