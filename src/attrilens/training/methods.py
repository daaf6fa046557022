"""TrackStar, DataInf, TracIn, grad-dot, grad-cos and BM25 behind one interface: examples → index features,
a query → a query vector, plus how the index scores the two (a dot product per checkpoint block, or DataInf).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.gradients import Example, Featurizer, weight_modules
from attrilens.training.preconditioning import Whitening, adam_scales, fit_whitening
from attrilens.training.projection import ALLOCATIONS

METHODS = ("trackstar", "datainf", "tracin", "grad-dot", "grad-cos", "bm25")


@dataclass
class MethodConfig:
    """Every knob of an attribution method (saved in the index manifest)."""

    method: str = "trackstar"
    proj_dim: int | None = 4096  # total projected features per checkpoint; None = full gradients
    seed: int = 0  # projection seed
    allocation: str = "proportional"  # how proj_dim is split over the weights: proportional to size, or equal (LoGra)
    correction: bool = True  # trackstar: divide by √(Adam second moment)
    use_r: bool = True  # trackstar: apply (λR_eval + (1−λ)R_train)^(−1/2)
    unit_norm: bool = True  # trackstar: unit-normalise features
    lam: float | None = None  # trackstar: λ; None = where the eigenvalue curves cross
    k: int | None = None  # trackstar: crossing component; None = min(1000, min(n_eval, n_train)/2)
    # trackstar: δ = damping · trace(R)/rank(R). Smaller finds fact sources more often, larger tracks one-step
    # influence (tail-patch) more closely; 1e-2 balances the two on the demo (sweep in docs/benchmarks.md)
    damping: float = 1e-2
    aggregate: str = "mean"  # tracin, datainf: mean or median (LLM Attributor's default) over checkpoints
    datainf_scale: float = 0.1  # datainf: λ_l = scale · mean ‖g_l‖² / D_l
    block_len: int = 128
    batch_size: int = 16

    def __post_init__(self):
        if self.method not in METHODS:
            raise AttrilensError(f"Unknown method {self.method!r}. Choose one of {', '.join(METHODS)}.")
        if self.proj_dim is not None and self.proj_dim < 1:
            raise AttrilensError(f"proj_dim must be positive, got {self.proj_dim}.")
        if self.allocation not in ALLOCATIONS:
            raise AttrilensError(f"Unknown projection allocation {self.allocation!r}. Use one of {', '.join(ALLOCATIONS)}.")
        if self.aggregate not in ("mean", "median"):
            raise AttrilensError(f"aggregate must be 'mean' or 'median', not {self.aggregate!r}.")
        if self.batch_size < 1:
            raise AttrilensError(f"batch_size must be positive, got {self.batch_size}.")
        if not self.damping > 0:
            raise AttrilensError(f"damping must be positive (R is low-rank with fewer examples than dimensions), "
                                 f"got {self.damping}. Use e.g. 1e-2.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The settings that change the features (batch size does not)."""
        d = self.to_dict()
        d.pop("batch_size")
        return d


def _load_checkpoint_lm(path: Path, tokenizer, attn_implementation: str | None = None) -> LM:
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return LM(model, tokenizer, name=str(path))


def tracin_checkpoints(model_dir: Path) -> list[tuple[str, float]]:
    """(relative path or "" for the final model, learning rate) of every saved checkpoint, from training.json."""
    info_path = Path(model_dir) / "training.json"
    if not info_path.is_file():
        raise AttrilensError(f"No training.json in {model_dir}: TracIn needs the saved checkpoints and their learning "
                             "rates. Use a model written by `attrilens train`.")
    info = json.loads(info_path.read_text())
    out = [(c["path"], float(c["lr"])) for c in info.get("checkpoints", [])]
    final_lr = float(info.get("optimizer", {}).get("final_lr", info.get("config", {}).get("lr", 1.0)))
    out.append(("", final_lr))
    return out


def _lora_base_with_checkpoints(model_dir: Path | None) -> str | None:
    """The base model of a LoRA adapter directory whose training.json lists saved adapter checkpoints, else None."""
    if model_dir is None or not (model_dir / "adapter_config.json").is_file() or not (model_dir / "training.json").is_file():
        return None
    info = json.loads((model_dir / "training.json").read_text())
    return info["base"] if info.get("checkpoints") else None


class GradientMethod:
    """Features of a gradient-based method: raw (per example) → finished (index) and query vectors."""

    def __init__(self, config: MethodConfig, lm: LM, model_dir: Path | None = None):
        if config.method == "bm25":
            raise AttrilensError("BM25 has no gradient features; use the BM25 retriever.")
        self.config = config
        self.lm = lm
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.whitening: Whitening | None = None
        self.datainf_lambdas: torch.Tensor | None = None
        params = "lora" if config.method == "datainf" else "linear"
        proj = None if config.method == "datainf" else config.proj_dim
        proj_kw = {"proj_dim": proj, "seed": config.seed, "allocation": config.allocation}
        self.views: list[tuple[Featurizer, float]] = []
        self.checkpoints: list[tuple[str, float]] = []
        load_checkpoint = None  # checkpoint dir → its LM, for the methods that use every saved checkpoint
        if config.method == "tracin":
            self._need_dir("TracIn")
            load_checkpoint = partial(_load_checkpoint_lm, tokenizer=lm.tokenizer)
        elif config.method == "datainf" and (lora_base := _lora_base_with_checkpoints(self.model_dir)) is not None:
            # LLM Attributor: DataInf at every saved adapter checkpoint and the final one, scores aggregated
            load_checkpoint = partial(LM.from_pretrained, base=lora_base)
        if load_checkpoint is not None:
            self.checkpoints = tracin_checkpoints(self.model_dir)
            for rel, lr in self.checkpoints:
                view_lm = lm if rel == "" else load_checkpoint(self.model_dir / rel)
                weight = lr**0.5 if config.method == "tracin" else 1.0  # TracIn: √η_c on both sides of the dot
                self.views.append((Featurizer(view_lm, params=params, **proj_kw), weight))
        else:
            scales = None
            if config.method == "trackstar" and config.correction:
                self._need_dir("TrackStar's optimizer correction")
                scales = adam_scales(self.model_dir, lm.model, weight_modules(lm.model, params))
            self.views.append((Featurizer(lm, params=params, scales=scales, **proj_kw), 1.0))
        self.block_dim = self.views[0][0].dim
        self.dim = self.block_dim * len(self.views)
        self.n_blocks = len(self.views)

    def _need_dir(self, what: str) -> None:
        if self.model_dir is None or not self.model_dir.is_dir():
            raise AttrilensError(f"{what} needs the model directory (optimizer state, checkpoints), but none is known "
                                 "for this model. Pass model_dir= (or --model DIR).")

    @property
    def layer_slices(self) -> dict[str, tuple[int, int]]:
        return self.views[0][0].slices()

    def raw(self, examples: Sequence[Example]) -> torch.Tensor:
        """Per-example features before R / normalisation: [N, dim] (TracIn: √η_c-scaled blocks side by side)."""
        bs = self.config.batch_size
        return torch.cat([f.features(examples, batch_size=bs) * w for f, w in self.views], dim=1)

    @property
    def needs_fit(self) -> bool:
        return self.config.method == "trackstar" and self.config.use_r

    def fit(self, train_raw: torch.Tensor, eval_raw: torch.Tensor | None) -> None:
        """Fit TrackStar's R^(−1/2) from the raw training features and the raw eval-query features."""
        c = self.config
        self.whitening = fit_whitening(train_raw, eval_raw, lam=c.lam, k=c.k, damping=c.damping)

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw features → the features stored in (and compared by) the index."""
        c = self.config
        x = raw.float()
        if c.method == "trackstar":
            if c.use_r:
                if self.whitening is None:
                    raise AttrilensError("TrackStar's R has not been fitted. Build the index first.")
                x = self.whitening.apply(x)
            if c.unit_norm:
                x = torch.nn.functional.normalize(x, dim=1)
        elif c.method == "grad-cos":
            x = torch.nn.functional.normalize(x, dim=1)
        return x

    def query(self, example: Example) -> torch.Tensor:
        """The finished feature vector of one query example."""
        return self.finish(self.raw([example]))[0]

    # ------------------------------------------------------------------ state saved in the index
    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.whitening is not None:
            out.update({f"whitening.{k}": v for k, v in self.whitening.tensors().items()})
        if self.datainf_lambdas is not None:
            out["datainf.lambdas"] = self.datainf_lambdas
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        w = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("whitening.")}
        if w:
            self.whitening = Whitening.from_tensors(w)
        if "datainf.lambdas" in tensors:
            self.datainf_lambdas = tensors["datainf.lambdas"]

    def datainf_groups(self) -> list[tuple[int, int]]:
        """Column ranges of the LoRA layers (A and B of one adapted module form one layer), checkpoint by checkpoint."""
        groups: dict[str, list[int]] = {}
        for name, (a, b) in self.layer_slices.items():
            key = name.split(".lora_")[0]
            groups.setdefault(key, [a, b])
            groups[key][0], groups[key][1] = min(groups[key][0], a), max(groups[key][1], b)
        return [(a + c * self.block_dim, b + c * self.block_dim) for c in range(self.n_blocks) for a, b in groups.values()]


def bm25_query_text(prompt: str, response: str) -> str:
    """What BM25 searches with: the prompt and the response."""
    return f"{prompt} {response}"


class BM25Retriever:
    """Okapi BM25 (bm25s) over the block texts; rebuilt from the stored texts when an index is opened."""

    def __init__(self, texts: Sequence[str]):
        import bm25s

        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
        self.n = len(texts)

    def scores(self, query: str) -> torch.Tensor:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not tokens:
            return torch.zeros(self.n)
        return torch.as_tensor(self.retriever.get_scores(tokens), dtype=torch.float32)
