"""Seeded two-sided Gaussian projections, one pair per weight matrix: same seed and names ⇒ same features.

A weight gradient G (out × in) is mapped to P_L G P_Rᵀ (k_o × k_i) with P_L ~ N(0, 1/k_o), P_R ~ N(0, 1/k_i),
so E[⟨P_L G P_Rᵀ, P_L H P_Rᵀ⟩] = ⟨G, H⟩ (Johnson–Lindenstrauss). How the d features are split over the weights:
- "proportional" (default): k_o = c·out, k_i = c·in with one scale c, so every weight gets features in proportion
  to its size and the sketch is equally dense everywhere. With a vocabulary-sized unembedding (2048 × 128 in
  the demo model, a quarter of its weights) this keeps the layer that carries most of the fact signal;
- "equal": one side length s shared by all, the largest with Σ min(out, s)·min(in, s) ≤ d (LoGra's allocation),
  which gives the unembedding as few features as a 128 × 128 attention matrix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attrilens.errors import AttrilensError


@dataclass(frozen=True)
class LayerProjection:
    """The pair (P_L: k_o × out, P_R: k_i × in) of one weight matrix, or None for identity (unprojected)."""

    left: torch.Tensor | None
    right: torch.Tensor | None

    @property
    def out_dim(self) -> int:
        return self.left.shape[0] * self.right.shape[0]


def _seed(seed: int, name: str, side: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gaussian(rows: int, cols: int, seed: int, name: str, side: str) -> torch.Tensor:
    """A rows × cols matrix with N(0, 1/rows) entries drawn from a generator seeded by (seed, name, side)."""
    g = torch.Generator().manual_seed(_seed(seed, name, side))
    return torch.randn(rows, cols, generator=g, dtype=torch.float32) / rows**0.5


def _check_dim(shapes: Mapping[str, tuple[int, int]], d: int) -> None:
    """Every weight matrix needs at least one feature."""
    if d < len(shapes):
        raise AttrilensError(f"proj_dim {d} is smaller than the {len(shapes)} weight matrices featurised. "
                             f"Pass --proj-dim of at least {len(shapes)}.")


def side_length(shapes: Mapping[str, tuple[int, int]], d: int) -> int:
    """Largest s with Σ min(out, s)·min(in, s) ≤ d (at least 1)."""
    _check_dim(shapes, d)
    lo, hi = 1, max(max(s) for s in shapes.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(o, mid) * min(i, mid) for o, i in shapes.values()) <= d:
            lo = mid
        else:
            hi = mid - 1
    return lo


ALLOCATIONS = ("proportional", "equal")

# The default d: FEATURES_PER_WEIGHT per featurised weight matrix, as a power of two within [MIN_AUTO_DIM, MAX_AUTO_DIM]
# (2^16 is the paper's d; R's d × d fit bounds it on a CPU). Measured on SmolLM2-135M (211 weight matrices), the
# Spearman of projected vs exact scores rises from 2^12 to 2^16 (docs/benchmarks.md, "projection fidelity").
FEATURES_PER_WEIGHT = 256
MIN_AUTO_DIM, MAX_AUTO_DIM = 2**12, 2**16


def default_proj_dim(n_weights: int) -> int:
    """The projection size used when none is given: 256 features per weight matrix, rounded up to a power of two,
    at least 2^12 and at most 2^16 (SmolLM2-135M: 211 matrices → 2^16; Gemma-3-270M: 127 → 2^15)."""
    if n_weights < 1:
        raise AttrilensError(f"There are no weight matrices to project ({n_weights}). Featurise a model with weights.")
    want = FEATURES_PER_WEIGHT * n_weights
    return min(MAX_AUTO_DIM, max(MIN_AUTO_DIM, 1 << (want - 1).bit_length()))


def proportional_sides(shapes: Mapping[str, tuple[int, int]], d: int) -> dict[str, tuple[int, int]]:
    """(k_o, k_i) = (round(c·out), round(c·in)) clipped to [1, out] × [1, in], with the largest c keeping Σ k_o·k_i ≤ d."""
    _check_dim(shapes, d)

    def sides(c: float) -> dict[str, tuple[int, int]]:
        return {n: (min(o, max(1, round(c * o))), min(i, max(1, round(c * i)))) for n, (o, i) in shapes.items()}

    lo, hi = 0.0, 1.0
    for _ in range(60):  # the total is monotone in c: bisect on it
        mid = (lo + hi) / 2
        if sum(a * b for a, b in sides(mid).values()) <= d:
            lo = mid
        else:
            hi = mid
    return sides(lo)


def allocate(shapes: Mapping[str, tuple[int, int]], d: int, allocation: str = "proportional") -> dict[str, tuple[int, int]]:
    """Projected (k_o, k_i) of each weight for a total of at most d features."""
    if allocation == "proportional":
        return proportional_sides(shapes, d)
    if allocation == "equal":
        s = side_length(shapes, d)
        return {n: (min(o, s), min(i, s)) for n, (o, i) in shapes.items()}
    raise AttrilensError(f"Unknown projection allocation {allocation!r}. Use one of {', '.join(ALLOCATIONS)}.")


def make_projections(shapes: Mapping[str, tuple[int, int]], d: int | None, seed: int,
                     allocation: str = "proportional") -> dict[str, LayerProjection]:
    """Projections for each weight (name → (out, in)); d=None means no projection (full gradients)."""
    if d is None:
        return {name: LayerProjection(None, None) for name in shapes}
    sides = allocate(shapes, d, allocation)
    return {
        name: LayerProjection(gaussian(sides[name][0], o, seed, name, "left"), gaussian(sides[name][1], i, seed, name, "right"))
        for name, (o, i) in shapes.items()
    }


def feature_dims(shapes: Mapping[str, tuple[int, int]], projections: Mapping[str, LayerProjection]) -> dict[str, int]:
    """Number of features each weight contributes."""
    return {n: (o * i if projections[n].left is None else projections[n].out_dim) for n, (o, i) in shapes.items()}


LARGE_PRODUCT = 1 << 28  # multiply-adds per example above which project_full reorders its two products


def project_full(grad: torch.Tensor, proj: LayerProjection) -> torch.Tensor:
    """Project full per-example gradients [B, out, in] → [B, k_o·k_i] (the reference for the factored path).

    P_L first costs k_o·out·in multiply-adds per example, P_R first out·in·k_i + k_o·out·k_i. For a large layer
    (P_L first over `LARGE_PRODUCT`) the cheaper order is taken — a vocabulary-sized unembedding (out ≫ in) of a
    real model is ~30× cheaper P_R first; smaller layers keep P_L first, so features of small models stay
    bit-identical to those computed before the switch existed.
    """
    if proj.left is None:
        return grad.reshape(grad.shape[0], -1)
    left, right = proj.left.to(grad.device), proj.right.to(grad.device)
    (k, o), j, i = left.shape, right.shape[0], grad.shape[2]
    if k * o * i > LARGE_PRODUCT and o * i * j + k * o * j < k * o * i:
        return (left @ (grad @ right.T)).reshape(grad.shape[0], -1)
    return torch.einsum("ko,boi,ji->bkj", left, grad, right).reshape(grad.shape[0], -1)
