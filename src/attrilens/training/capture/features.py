"""The per-row arithmetic of a train-time capture: the loss scale c_b of each row, fitted from the logits'
gradient, and a layer's projected gradient contracted in the cheaper order for its shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.training.gradients import FactoredScale, Featurizer

# Largest |G − c_b·(softmax − onehot)| / |G| accepted for a row: float32 noise is ~1e-7; a different loss is O(1).
LOSS_RESIDUAL = 1e-3
SCALE_POSITIONS = 8  # counted positions per row that the loss scale is fitted and checked on


def loss_scale(ids: torch.Tensor, counted_rows: torch.Tensor, lengths: Sequence[int], names: Sequence[str],
               logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """c_b of each row: at a counted position the logits' gradient is c_b · (softmax − onehot(target)), and at
    the row's last token (which predicts nothing) it is 0. Fitted (least squares) and checked on up to
    `SCALE_POSITIONS` counted positions per row: c_b is one number, and all B × T × vocab would cost a pass."""
    with torch.no_grad():
        n_rows = ids.shape[0]
        counted = counted_rows.to(g.device) > 0
        rank = counted.long().cumsum(1) - 1  # rank of each counted position within its row
        n = counted.sum(1, keepdim=True)  # evenly spread ranks 0..n-1 (all of them when n ≤ SCALE_POSITIONS)
        k = torch.arange(SCALE_POSITIONS, device=g.device)[None]
        picks = (k * (n - 1) / max(SCALE_POSITIONS - 1, 1)).round().long()  # [B, K]
        r, t = (counted & (rank[:, :, None] == picks[:, None, :]).any(-1)).nonzero(as_tuple=True)
        c = torch.ones(n_rows, dtype=torch.float64, device=g.device)
        if len(r):
            prob = torch.softmax(logits[r, t - 1].double(), dim=-1)
            y = ids[r, t]
            at = torch.arange(len(r), device=g.device)
            d = prob.clone()
            d[at, y] = -(prob.sum(-1) - prob[at, y])  # p_y − 1, without cancellation when p_y ≈ 1
            gg = g[r, t - 1].double()
            per_row = torch.zeros(n_rows, 3, dtype=torch.float64, device=g.device)
            per_row.index_add_(0, r, torch.stack([(gg * d).sum(-1), (d * d).sum(-1), (gg * gg).sum(-1)], 1))
            live = per_row[:, 1] > 0
            c = torch.where(live, per_row[:, 0] / per_row[:, 1].clamp_min(1e-300), c)
            resid = torch.zeros(n_rows, dtype=torch.float64, device=g.device)
            resid.index_add_(0, r, (gg - c[r, None] * d).pow(2).sum(-1))
            last = torch.tensor(lengths, device=g.device) - 1
            resid += g[torch.arange(n_rows, device=g.device), last].double().pow(2).sum(-1)
            rel = resid.sqrt() / per_row[:, 2].sqrt().clamp_min(1e-300)
            bad = live & ((rel > LOSS_RESIDUAL) | ~(c > 0))
            if bool(bad.any()):
                b = int(bad.nonzero()[0, 0])
                raise AttrilensError(f"The training loss of row {names[b]} is not a sum of next-token "
                                     f"cross-entropies of its tokens (relative residual {float(rel[b]):.2g}): its "
                                     "captured gradient would not be an index row. Train with the plain causal-LM "
                                     "loss (no label smoothing) or build the index after training.")
        return c.float().to(g.device)


def layer_features(featurizer: Featurizer, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """P_L (Σ_t δ_t x_tᵀ) P_Rᵀ of each row, contracted in the cheapest order for this layer's shape: the
    featuriser's factored order Σ_t (P_L δ_t)(P_R x_t)ᵀ costs T·(out·k_o + in·k_i) per row, P_R first
    P_L (Σ_t δ_t (P_R x_t)ᵀ) costs T·k_i·(out + in) + k_o·out·k_i — 12× less for the demo model's unembedding
    (out 2048, k_o 180, k_i 11). The same numbers up to float32 rounding (associativity)."""
    proj = featurizer.projections[name]
    scale = featurizer.scales[name] if featurizer.scales is not None else None
    if proj.left is None or (scale is not None and not isinstance(scale, FactoredScale)):
        return featurizer.layer_features(name, x, delta)  # elementwise scales: per-example G is formed
    (k_o, out), (k_i, inn), t = proj.left.shape, proj.right.shape, x.shape[1]
    factored = t * (out * k_o + inn * k_i + k_o * k_i)
    right_first = t * k_i * (out + inn) + k_o * out * k_i
    if right_first >= factored:  # the featuriser's own order and operations (the same bits)
        return featurizer.layer_features(name, x, delta)
    x, delta = x.float(), delta.float()
    if scale is not None:  # a row × column correction diag(r) G diag(c): folded into δ and x, as the featuriser
        delta, x = delta * scale.row.to(delta.device), x * scale.col.to(x.device)
    b = x @ proj.right.T.to(x.device)  # [B, T, k_i]
    m = torch.einsum("bto,btj->boj", delta, b)  # [B, out, k_i]
    return (proj.left.to(x.device) @ m).reshape(x.shape[0], -1)
