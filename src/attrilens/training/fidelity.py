"""Exact (unprojected) inner products of per-example weight gradients, layer by layer, without forming any gradient.

For a weight whose per-example gradient is G = Σ_t δ_t x_tᵀ (see `gradients`), ⟨G_a, G_b⟩ = Σ_{t,s} (δ_at·δ_bs)(x_at·x_bs):
the sum of the elementwise product of two token Gram matrices. It costs T_a·T_b·(out + in) per pair and weight
instead of out·in numbers per example, so the 134 M gradient dimensions of SmolLM2-135M never exist — the reference
the projection-fidelity benchmark compares projected scores with. A factored correction (r cᵀ, `FactoredScale`)
is applied to δ and x first; an elementwise one does not factor and is refused.
"""

from __future__ import annotations

import torch

from attrilens.errors import AttrilensError
from attrilens.training.gradients import FactoredScale, Scale

Captured = dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight → (x [B, T, in], δ [B, T, out])


def _scaled(x: torch.Tensor, delta: torch.Tensor, scale: Scale | None) -> tuple[torch.Tensor, torch.Tensor]:
    if scale is None:
        return x.double(), delta.double()
    if not isinstance(scale, FactoredScale):
        raise AttrilensError("Exact inner products need no correction or a factored one (moment_kind adafactor); an "
                             "elementwise correction does not factor over tokens.")
    return x.double() * scale.col.double(), delta.double() * scale.row.double()


def gram_inner_products(a: Captured, b: Captured, scales: dict[str, Scale] | None = None) -> torch.Tensor:
    """⟨G_a, G_b⟩ summed over the weights of `a` (both from `Featurizer.captured_gradients`): [B_a, B_b], fp64."""
    out = None
    for name, (xa, da) in a.items():
        if name not in b:
            raise AttrilensError(f"Weight {name} was captured for one side only. Capture both with one featuriser.")
        scale = scales.get(name) if scales is not None else None
        xa, da = _scaled(xa, da, scale)
        xb, db = _scaled(*b[name], scale)
        k = torch.einsum("ato,bso->abts", da, db) * torch.einsum("ati,bsi->abts", xa, xb)
        part = k.sum(dim=(2, 3))
        out = part if out is None else out + part
    if out is None:
        raise AttrilensError("No captured weights to take inner products of.")
    return out
