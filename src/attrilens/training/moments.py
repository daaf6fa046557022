"""Second moments of the loss gradients estimated from a corpus sample: TrackStar's correction without optimizer state.

A downloaded checkpoint carries no AdamW `exp_avg_sq`. As Bergson's normalisers do, v is estimated from squared
gradients over a seeded sample of the corpus being indexed:
- "adam": v = mean of g ⊙ g per parameter (what Adam's v averages, without the moving average);
- "adafactor": the row and column means r, c of g ⊙ g, v ≈ r cᵀ / mean(r) (Shazeer & Stern 2018). Its correction
  1/√v is rank one, so the fast factored featurisation path still applies (`FactoredScale`), and the estimate
  is out + in numbers per weight instead of out × in.
The gradients are those of the mean token loss of batches of `batch_size` blocks (Adam's v averages minibatch
gradients; batch_size = 1 gives per-example gradients). Scales are 1/√(v + ε·v̄) with v̄ the mean of v over every
featurised weight: ε is relative, so the scale of the loss does not matter and weights the sample never moves
(e.g. the unembedding rows of tokens that never occur) are not blown up by 1/√0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.training.gradients import Example, FactoredScale, Featurizer, Scale

MOMENT_KINDS = ("adam", "adafactor")

Moments = dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]  # v [out, in], or (r [out], c [in])


def check_kind(kind: str) -> None:
    """The kind of estimate must be one of MOMENT_KINDS."""
    if kind not in MOMENT_KINDS:
        raise AttrilensError(f"Unknown second-moment estimate {kind!r}. Use one of {', '.join(MOMENT_KINDS)}.")


def estimate_second_moments(featurizer: Featurizer, examples: Sequence[Example], *, kind: str = "adam",
                            batch_size: int = 8, progress: bool = False) -> Moments:
    """Mean over batches of the squared gradient of the batch's mean token loss (per parameter, or its row and
    column means for "adafactor"), for every weight the featuriser covers, (out, in) orientation, fp32."""
    check_kind(kind)
    if not examples:
        raise AttrilensError("No examples to estimate the second moments from. Pass a non-empty corpus sample.")
    if batch_size < 1:
        raise AttrilensError(f"The second-moment batch size must be at least 1, got {batch_size}.")
    from tqdm import tqdm

    acc: dict[str, list[torch.Tensor]] = {}
    n_batches = 0
    bar = tqdm(total=len(examples), desc="estimate second moments", file=sys.stderr, disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        tokens = sum(sum(e.mask[1:]) for e in batch)
        for name, (x, delta) in featurizer.captured_gradients(batch).items():
            g = torch.einsum("bto,bti->oi", delta.float(), x.float()) / tokens  # gradient of the mean token loss
            sq = g.square_()
            parts = [sq] if kind == "adam" else [sq.mean(1), sq.mean(0)]
            if name in acc:
                for a, p in zip(acc[name], parts, strict=True):
                    a.add_(p)
            else:
                acc[name] = [p.cpu() for p in parts]
        n_batches += 1
        bar.update(len(batch))
    bar.close()
    out: Moments = {}
    for name, parts in acc.items():
        parts = [p / n_batches for p in parts]
        out[name] = parts[0] if kind == "adam" else (parts[0], parts[1])
    return out


def moment_scales(moments: Moments, eps: float) -> dict[str, Scale]:
    """Per-weight corrections 1/√(v + ε·v̄) (v̄: mean of v over all weights); for row/column moments the factored
    1/√(r' c'ᵀ / mean(r')) with r' = r + ε·v̄, c' = c + ε·v̄ (the floor added to each factor)."""
    if not eps > 0:
        raise AttrilensError(f"moment_eps must be positive (it keeps unseen weights finite), got {eps}.")
    total, count = 0.0, 0
    for v in moments.values():
        if isinstance(v, tuple):  # mean of r cᵀ / mean(r) over the weight = mean(c)
            total += float(v[1].double().mean()) * v[0].numel() * v[1].numel()
            count += v[0].numel() * v[1].numel()
        else:
            total += float(v.double().sum())
            count += v.numel()
    floor = eps * total / max(count, 1)
    if not floor > 0:
        raise AttrilensError("Every estimated second moment is zero: the sample gives no gradient. Check the "
                             "model and corpus, or pass a larger moment_sample.")
    out: dict[str, Scale] = {}
    for name, v in moments.items():
        if isinstance(v, tuple):
            r, c = v[0].float() + floor, v[1].float() + floor
            out[name] = FactoredScale(r.rsqrt() * float(r.mean()) ** 0.5, c.rsqrt())
        else:
            out[name] = (v.float() + floor).rsqrt()
    return out


def moments_to_tensors(moments: Moments) -> dict[str, torch.Tensor]:
    """Flat named tensors for the index's safetensors file: "moments.<weight>" or "moments_row/col.<weight>"."""
    out = {}
    for name, v in moments.items():
        if isinstance(v, tuple):
            out[f"moments_row.{name}"], out[f"moments_col.{name}"] = v[0].contiguous(), v[1].contiguous()
        else:
            out[f"moments.{name}"] = v.contiguous()
    return out


def moments_from_tensors(tensors: dict[str, torch.Tensor]) -> Moments:
    """The inverse of `moments_to_tensors` (stored dtypes kept; other keys ignored); {} when none are stored."""
    out: Moments = {}
    for key, v in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix == "moments":
            out[name] = v
        elif prefix == "moments_row":
            out[name] = (v, tensors[f"moments_col.{name}"])
    return out


def round_moments(moments: Moments) -> Moments:
    """Per-parameter moments rounded to bfloat16 (the stored precision: half the bytes, fp32's range), so the
    build and every later query use the very same values; factored ones stay fp32 (they are small)."""
    return {n: v if isinstance(v, tuple) else v.to(torch.bfloat16) for n, v in moments.items()}
