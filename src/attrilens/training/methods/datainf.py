"""DataInf (Kwon et al. 2023) on the LoRA matrices: a closed-form inverse-Hessian approximation per LoRA layer.

Per layer l with training gradients g_il and query gradient v_l: r_l = (n v_l − Σ_i (v_l·g_il)/(λ_l + ‖g_il‖²) g_il)
/ (n λ_l) and score_i = Σ_l g_il · r_l, with λ_l = scale · mean_i ‖g_il‖² / D_l. On an adapter directory whose
training.json lists saved adapter checkpoints, DataInf runs at each checkpoint and the final adapter, and the
scores are aggregated by mean or median (LLM Attributor).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.training.checkpoints import (
    check_aggregate,
    checkpoint_lms,
    lora_base_with_checkpoints,
    saved_checkpoints,
)
from attrilens.training.gradients import Featurizer
from attrilens.training.methods.base import TDA_METHODS, TDAOptions
from attrilens.training.methods.gradient import GradientMethod
from attrilens.training.preconditioning import datainf_lambdas
from attrilens.training.search import AGGREGATES, ScoreStream, aggregate_checkpoints, iter_chunks
from attrilens.training.store import Shards


@dataclass
class DataInfOptions(TDAOptions):
    """DataInf's knobs: checkpoint aggregation and the damping scale (LoRA gradients are never projected)."""

    aggregate: str = option("mean", choices=AGGREGATES, help="how the per-checkpoint scores combine: mean, or "
                                                             "median (LLM Attributor's default; robust to one "
                                                             "odd checkpoint)")
    datainf_scale: float = option(0.1, help="damping λ_l = scale · mean ‖g_l‖² / D_l: larger is more stable, "
                                            "smaller closer to the exact inverse Hessian")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_aggregate(self.aggregate)
        if not self.datainf_scale > 0:
            raise AttrilensError(f"datainf_scale must be positive, got {self.datainf_scale}. Use e.g. 0.1.")


@TDA_METHODS.register("datainf")
class DataInf(GradientMethod):
    """DataInf: closed-form influence on the LoRA matrices of a fine-tuned adapter (run on a LoRA model)."""

    Options = DataInfOptions
    params = "lora"
    needs_lora = True
    fits_after_build = True
    lambdas: torch.Tensor | None = None  # λ_l per layer and checkpoint, fitted by `after_build`
    row_sq_norms: torch.Tensor | None = None  # ‖g_il‖² [rows, layers × checkpoints] (an older index: on first use)

    def featurizer(self, lm: LM, scales: dict[str, torch.Tensor] | None = None) -> Featurizer:
        """The LoRA matrices' full (unprojected) gradients."""
        return Featurizer(lm, params=self.params, scales=scales, proj_dim=None)

    def make_views(self) -> list[tuple[Featurizer, float]]:
        """The final adapter, preceded by every saved adapter checkpoint when training.json lists them."""
        base = lora_base_with_checkpoints(self.model_dir)
        if base is None:
            return [(self.featurizer(self.lm), 1.0)]
        self.checkpoints = saved_checkpoints(self.model_dir)
        load = partial(LM.from_pretrained, base=base)
        return [(self.featurizer(lm), 1.0) for lm, _ in checkpoint_lms(self.lm, self.model_dir, self.checkpoints, load)]

    def layer_groups(self) -> list[tuple[int, int]]:
        """Column ranges of the LoRA layers (A and B of one adapted module form one layer), checkpoint by checkpoint."""
        groups: dict[str, list[int]] = {}
        for name, (a, b) in self.layer_slices.items():
            key = name.split(".lora_")[0]
            groups.setdefault(key, [a, b])
            groups[key][0], groups[key][1] = min(groups[key][0], a), max(groups[key][1], b)
        return [(a + c * self.block_dim, b + c * self.block_dim) for c in range(self.n_blocks) for a, b in groups.values()]

    def after_build(self, shards: Shards) -> bool:
        """λ_l from the stored training features (mean squared norm per layer); each row's squared norm per layer
        is kept too (every query's r_l needs them: stored, they are not recomputed per query)."""
        self.row_sq_norms = self._row_sq_norms(shards)
        self.lambdas = datainf_lambdas(self.row_sq_norms, [b - a for a, b in self.layer_groups()],
                                       self.options.datainf_scale)
        return True

    def _row_sq_norms(self, shards: Shards) -> torch.Tensor:
        """‖g_il‖² per training row and LoRA layer (× checkpoint): [n, layers], float64."""
        groups = self.layer_groups()
        return torch.cat([torch.stack([x[:, a:b].double().pow(2).sum(1) for a, b in groups], dim=1)
                          for _, x in iter_chunks(shards)])

    def state(self) -> dict[str, torch.Tensor]:
        out = {} if self.lambdas is None else {"datainf.lambdas": self.lambdas}
        if self.row_sq_norms is not None:  # float32 on disk: 4 bytes a row and layer, beside millions of features
            out["datainf.row_sq_norms"] = self.row_sq_norms.float()
        return out

    def load(self, state, corpus) -> None:
        if "datainf.lambdas" in state:
            self.lambdas = state["datainf.lambdas"]
        norms = state.get("datainf.row_sq_norms")
        self.row_sq_norms = None if norms is None else norms.double()

    def check_state(self) -> None:
        if self.lambdas is None:
            raise AttrilensError("DataInf's λ is not in this index (its preconditioner.safetensors is missing or "
                                 "was replaced). Rebuild the index.")

    @property
    def supports_faiss(self) -> bool:
        return False

    def score_stream(self, shards: Shards, query: torch.Tensor) -> ScoreStream:
        """DataInf per checkpoint (one closed-form r per LoRA layer), then mean or median over checkpoints."""
        for offset, per in self.view_score_stream(shards, query):
            yield offset, aggregate_checkpoints(per, self.options.aggregate).float().numpy()

    def view_score_stream(self, shards: Shards, query: torch.Tensor):
        """(offset, scores [rows, checkpoints]) before the aggregation: what an ensemble of runs aggregates jointly
        over checkpoints × data orders."""
        for offset, per in self.view_score_stream_many(shards, query[None]):
            yield offset, per[:, 0]

    def view_score_stream_many(self, shards: Shards, queries: torch.Tensor):
        """(offset, scores [rows, queries, checkpoints]) of several queries [m, dim] in the same two reads of the
        shards (a query reads every stored LoRA gradient twice: first for r_l, then for g_il · r_l). Products in
        float32 from the float16 rows, sums over rows in float64."""
        if self.lambdas is None:
            raise AttrilensError("DataInf's λ is not in this index (its preconditioner.safetensors is missing or "
                                 "was replaced). Rebuild the index.")
        n = sum(a.shape[0] for _, a in shards)
        if self.row_sq_norms is None or len(self.row_sq_norms) != n:
            self.row_sq_norms = self._row_sq_norms(shards)  # an index built before they were stored
        groups, lam, sq = self.layer_groups(), self.lambdas, self.row_sq_norms
        q = queries.float()
        m = q.shape[0]
        acc = [torch.zeros(m, b - a, dtype=torch.float64) for a, b in groups]
        for offset, x in iter_chunks(shards):
            rows = slice(offset, offset + x.shape[0])
            for j, (a, b) in enumerate(groups):
                g = x[:, a:b]
                c = (g @ q[:, a:b].T).double() / (lam[j] + sq[rows, j, None])  # [rows, m]
                acc[j] += (c.float().T @ g).double()
        rs = [((n * q[:, a:b].double() - acc[j]) / (n * lam[j])).float() for j, (a, b) in enumerate(groups)]
        for offset, x in iter_chunks(shards):
            per = torch.zeros(x.shape[0], m, self.n_blocks, dtype=torch.float64)
            for (a, b), r in zip(groups, rs, strict=True):
                per[:, :, a // self.block_dim] += (x[:, a:b] @ r.T).double()
            yield offset, per

    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        return [("DataInf (LoRA)", {})]
