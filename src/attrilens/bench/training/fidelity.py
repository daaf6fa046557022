"""Projection fidelity: how well projected gradient dot products keep the order of the exact ones, on the toy
model (against unprojected features) and on a real model (against exact layer-by-layer products)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from attrilens.metrics import spearman


def projection_fidelity(lm, model_dir: Path, blocks, queries: list, dims: list[int]):
    """Spearman of projected vs unprojected gradient dot products (Adam-corrected, no R), per d and allocation."""
    import pandas as pd

    from attrilens.training.gradients import Example
    from attrilens.training.methods.trackstar import TrackStar, TrackStarOptions

    def raw_features(**options):
        m = TrackStar(TrackStarOptions(use_r=False, unit_norm=False, **options), lm, model_dir)
        if m.needs_prepare:  # second moments estimated (the saved state lost its range): same seeded sample each time
            m.prepare(blocks)
        return m

    ref = raw_features(proj_dim=None)
    bex = [Example.block(t, blocks.block_id(i)) for i, t in enumerate(blocks.tokens)]
    ref_train, ref_q = ref.featurize(bex), ref.featurize(queries)
    ref_scores = (ref_q @ ref_train.T).numpy()
    del ref_train
    rows = []
    for d in dims:
        for allocation in ("proportional", "equal"):
            m = raw_features(proj_dim=d, allocation=allocation)
            s = (m.featurize(queries) @ m.featurize(bex).T).numpy()
            rows.append({"d": d, "allocation": allocation, "actual dim": m.dim, "Spearman vs unprojected": float(
                np.mean([spearman(s[i], ref_scores[i]) for i in range(len(queries))])), "full dim": ref.dim})
    return pd.DataFrame(rows)


def real_projection_fidelity(lm, blocks: list, queries: list, dims: list[int], batch_size: int = 8,
                             progress: bool = True):
    """Spearman of projected vs exact gradient dot products, per query over `blocks`, at each d (proportional
    split), uncorrected and with the Adafactor-factored estimated correction. The exact products are taken layer
    by layer from token Gram matrices (`training.fidelity`); one backward pass per batch serves every d."""
    import pandas as pd
    from tqdm import tqdm

    from attrilens.training.fidelity import gram_inner_products
    from attrilens.training.gradients import Featurizer
    from attrilens.training.moments import estimate_second_moments, moment_scales

    base = Featurizer(lm, proj_dim=None)
    factored = moment_scales(estimate_second_moments(base, blocks, kind="adafactor", batch_size=8), 1e-3)
    variants = {"none": None, "adafactor (estimated)": factored}
    feats = {(c, d): Featurizer(lm, proj_dim=d, scales=s) for c, s in variants.items() for d in dims}
    qg = base.captured_gradients(queries)
    exact = {c: [] for c in variants}
    proj_q = {k: f.project_captured(qg) for k, f in feats.items()}
    proj_b = {k: [] for k in feats}
    for start in tqdm(range(0, len(blocks), batch_size), desc="projection fidelity", file=sys.stderr,
                      disable=not progress):
        bg = base.captured_gradients(blocks[start : start + batch_size])
        for c, s in variants.items():
            exact[c].append(gram_inner_products(qg, bg, s))
        for k, f in feats.items():
            proj_b[k].append(f.project_captured(bg))
    rows = []
    for (c, d), f in feats.items():
        ref = torch.cat(exact[c], dim=1).numpy()
        est = (proj_q[(c, d)].double() @ torch.cat(proj_b[(c, d)]).double().T).numpy()
        rho = [spearman(est[i], ref[i]) for i in range(len(queries))]
        rows.append({"correction": c, "d": d, "actual dim": f.dim, "Spearman vs exact (mean)": float(np.mean(rho)),
                     "Spearman (min over queries)": float(np.min(rho)), "exact dims": base.dim,
                     "queries × blocks": f"{len(queries)} × {len(blocks)}"})
    return pd.DataFrame(rows)
