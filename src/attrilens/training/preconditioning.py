"""Preconditioners: Adam second-moment correction, TrackStar's R^(-1/2) (mixed eval/train autocorrelation), DataInf λ.

- Optimizer correction (TrackStar): g ↦ g ⊘ √(v + ε), v = the final AdamW `exp_avg_sq` saved by the trainer (or,
  without optimizer state, an estimate from the corpus: `attrilens.training.moments`).
- R = λ R_eval + (1 − λ) R_train, R_X = Φ_Xᵀ Φ_X / n_X (uncentred autocorrelation of corrected projected
  features). λ makes the sorted eigenvalue curves of λ R_eval and (1 − λ) R_train cross at component k
  (λ = e_train[k] / (e_eval[k] + e_train[k]); the paper uses k = 1000). Applied as (R + δI)^(−1/2) with
  δ = damping · trace(R)/rank(R) (the mean non-zero eigenvalue: = trace/d once n ≥ d, as in the paper, and
  still a real ridge when fewer examples than dimensions leave R low-rank); computed from a thin
  eigendecomposition so d up to 2^16 needs no d × d matrix.
- DataInf: λ_l = 0.1 · mean_i ‖g_il‖² / D_l per layer (Kwon et al. 2023).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attrilens.errors import AttrilensError

OPTIMIZER_STATE = "optimizer.safetensors"  # the final AdamW exp_avg_sq, saved by `attrilens train`
# A float16 file cannot hold second moments below 6e-8: they become exactly 0, and 1/√(v + ε) turns into one
# constant 1/√ε for all of them. Refuse a half-precision state in which more than this share of a tensor is 0.
MAX_ZERO_SHARE = 0.01


def optimizer_state_problem(model_dir: Path) -> str | None:
    """Why the optimizer state in `model_dir` cannot be trusted as TrackStar's second moments (None: it can): a
    half-precision file whose tensors lost their range (moments that underflowed to exactly 0). Read once per
    version of the file: the answer is kept by path, size and mtime."""
    path = (Path(model_dir) / OPTIMIZER_STATE).resolve()
    st = path.stat()
    return _state_problem(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _state_problem(path: str, size: int, mtime_ns: int) -> str | None:
    from safetensors import safe_open

    zeros = total = 0
    worst = ("", 0.0)
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            if f.get_slice(key).get_dtype() not in ("F16", "BF16"):
                continue
            v = f.get_tensor(key)
            if v.ndim != 2:
                continue
            z = int((v == 0).sum())
            zeros, total = zeros + z, total + v.numel()
            if z / v.numel() > worst[1]:
                worst = (key, z / v.numel())
    if total and worst[1] > MAX_ZERO_SHARE:
        return (f"{path} stores second moments in half precision and {zeros:,} of {total:,} ({zeros / total:.0%}; "
                f"{worst[1]:.1%} of {worst[0]}) underflowed to 0")
    return None


def adam_scales(model_dir: Path, model: torch.nn.Module, modules: dict[str, torch.nn.Module],
                eps: float | None = None) -> dict[str, torch.Tensor]:
    """1/√(v + ε) per featurised weight, (out, in) orientation, from `optimizer.safetensors` in `model_dir`."""
    from safetensors import safe_open

    path = Path(model_dir) / OPTIMIZER_STATE
    if not path.is_file():
        raise AttrilensError(f"No {OPTIMIZER_STATE} in {model_dir}: TrackStar's optimizer correction needs the AdamW "
                             "second moments (a downloaded checkpoint has none). Estimate them from the corpus "
                             "instead (--second-moments estimate, or second_moments=\"estimate\"; the default "
                             "\"auto\" does so), or switch the correction off (--no-correction, or correction=False).")
    problem = optimizer_state_problem(Path(model_dir))
    if problem:
        raise AttrilensError(f"{problem}. Re-save the optimizer state in float32 (or bfloat16, float32's range), or "
                             "estimate the second moments from the corpus (--second-moments estimate).")
    if eps is None:
        info = Path(model_dir) / "training.json"
        eps = json.loads(info.read_text()).get("optimizer", {}).get("eps", 1e-8) if info.is_file() else 1e-8
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    out = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for mname, m in modules.items():
            key = next((f"exp_avg_sq.{n}" for n in names.get(id(m.weight), []) if f"exp_avg_sq.{n}" in keys), None)
            if key is None:
                raise AttrilensError(f"{path} has no second moment for {mname}.weight. Pass the optimizer state "
                                     "saved with this model.")
            v = f.get_tensor(key).float()
            if tuple(v.shape) != tuple(m.weight.shape):
                raise AttrilensError(f"{path}: {key} has shape {tuple(v.shape)} but the weight has "
                                     f"{tuple(m.weight.shape)}. Pass the optimizer state saved with this model.")
            s = 1.0 / torch.sqrt(v.clamp(min=0) + eps)
            out[mname] = s.T.contiguous() if type(m).__name__ == "Conv1D" else s
    return out


def _sym_eig(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e, u = torch.linalg.eigh(gram.double())
    return e.flip(0).clamp(min=0), u.flip(1)


def eigenvalues(features: torch.Tensor) -> torch.Tensor:
    """Sorted (descending) eigenvalues of ΦᵀΦ/n, via the smaller of the two Gram matrices."""
    n, d = features.shape
    f = features.double()
    gram = f @ f.T if n <= d else f.T @ f
    return _sym_eig(gram / n)[0]


def mixing_lambda(eval_features: torch.Tensor, train_features: torch.Tensor, k: int | None = None) -> tuple[float, int]:
    """λ at which the sorted eigenvalue curves of λR_eval and (1−λ)R_train cross at component k."""
    return _crossing(eigenvalues(eval_features), eigenvalues(train_features), k)


def _crossing(ee: torch.Tensor, et: torch.Tensor, k: int | None) -> tuple[float, int]:
    """λ where the sorted eigenvalue curves ee (of R_eval) and et (of R_train) cross at component k."""
    if k is None:
        k = min(1000, max(1, min(len(ee), len(et)) // 2))
    k = min(k, len(ee) - 1, len(et) - 1)
    a, b = float(ee[k]), float(et[k])
    if a + b <= 0:
        return 0.5, k
    return b / (a + b), k


@dataclass
class Whitening:
    """(R + δI)^(−1/2) as V diag(w) Vᵀ + δ^(−1/2)(I − V Vᵀ) with V: d × r."""

    vectors: torch.Tensor
    weights: torch.Tensor
    tail: float
    lam: float
    k: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vectors.to(x.device, torch.float32)
        x = x.float()
        c = x @ v
        return (c * (self.weights.to(x.device, torch.float32) - self.tail)) @ v.T + self.tail * x

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors.float().contiguous(), "weights": self.weights.float().contiguous(),
                "tail": torch.tensor([self.tail], dtype=torch.float64), "lam": torch.tensor([self.lam], dtype=torch.float64),
                "k": torch.tensor([self.k])}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Whitening:
        return cls(t["vectors"], t["weights"], float(t["tail"][0]), float(t["lam"][0]), int(t["k"][0]))


def fit_whitening(train_features: torch.Tensor, eval_features: torch.Tensor | None = None, *, lam: float | None = None,
                  k: int | None = None, damping: float = 1e-2) -> Whitening:
    """Fit TrackStar's (λR_eval + (1−λ)R_train + δI)^(−1/2); without eval features λ = 0."""
    if train_features.shape[0] == 0:
        raise AttrilensError("No training features to fit R on. Pass a non-empty corpus.")
    lam_, k_ = _lambda(eval_features, lam, k, lambda: mixing_lambda(eval_features, train_features, k))
    parts = [train_features.double() * ((1 - lam_) / train_features.shape[0]) ** 0.5]
    if lam_ > 0:
        parts.append(eval_features.double() * (lam_ / eval_features.shape[0]) ** 0.5)
    m = torch.cat(parts)  # R = mᵀ m
    d = m.shape[1]
    if m.shape[0] < d:
        e, u = _sym_eig(m @ m.T)
        keep = e > e[0] * 1e-12
        e, u = e[keep], u[:, keep]
        vecs = (m.T @ u) / e.sqrt()
    else:
        e, vecs = _sym_eig(m.T @ m)
    delta = damping * float(e.sum()) / min(d, int((e > e[0] * 1e-12).sum()))  # mean non-zero eigenvalue
    return _whitening(e, vecs, delta, lam_, k_)


def _lambda(eval_features: torch.Tensor | None, lam: float | None, k: int | None,
            crossing: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """(λ, k): 0 without eval features, `crossing()` (the eigenvalue-crossing rule) when λ is not given."""
    if eval_features is None or eval_features.shape[0] == 0:
        if lam not in (None, 0.0):
            raise AttrilensError("λ > 0 needs evaluation queries for R_eval. Pass eval queries or λ = 0.")
        return 0.0, 0
    if lam is None:
        return crossing()
    if not 0.0 <= lam <= 1.0:
        raise AttrilensError(f"λ must lie in [0, 1], got {lam}.")
    return float(lam), int(k or 0)


def _whitening(e: torch.Tensor, vecs: torch.Tensor, delta: float, lam: float, k: int) -> Whitening:
    """(R + δI)^(−1/2) from R's eigenpairs (e, vecs) and the ridge δ."""
    if not delta > 0:
        raise AttrilensError("All training features are zero; R cannot be fitted. Check the model and corpus.")
    return Whitening(vecs.float(), (e + delta).rsqrt().float(), delta ** -0.5, lam, k)


def moment_sum(features: torch.Tensor) -> torch.Tensor:
    """ΦᵀΦ in float64 [d, d]: one shard's share of R_train · n (the shards' sums add up to the whole statistic)."""
    f = features.double()
    return f.T @ f


def fit_whitening_moments(train_moments: torch.Tensor, n_train: int, eval_features: torch.Tensor | None = None, *,
                          lam: float | None = None, k: int | None = None, damping: float = 1e-2) -> Whitening:
    """`fit_whitening` from the reduced statistic Σ_shards ΦᵀΦ (`moment_sum`) instead of the features: the same R
    and rules (λ crossing, δ), eigendecomposed as a d × d matrix, so no node ever holds every feature; eigenvectors
    past the rank (≤ the number of rows) are dropped, which is what the thin form keeps."""
    if n_train < 1:
        raise AttrilensError("No training features to fit R on. Pass a non-empty corpus.")
    d = train_moments.shape[0]
    r_train = train_moments.double() / n_train
    n_eval = 0 if eval_features is None else eval_features.shape[0]
    lam_, k_ = _lambda(eval_features, lam, k,
                       lambda: _crossing(eigenvalues(eval_features), _sym_eig(r_train)[0][: min(n_train, d)], k))
    r = r_train * (1 - lam_)
    if lam_ > 0:
        f = eval_features.double()
        r = r + (f.T @ f) * (lam_ / n_eval)
    e, vecs = _sym_eig(r)
    rank = min(n_train + (n_eval if lam_ > 0 else 0), d, int((e > e[0] * 1e-12).sum()))
    e, vecs = e[:rank], vecs[:, :rank]
    delta = damping * float(e.sum()) / max(rank, 1)  # mean non-zero eigenvalue
    return _whitening(e, vecs, delta, lam_, k_)


def datainf_lambdas(sq_norms: torch.Tensor, dims: list[int], scale: float = 0.1) -> torch.Tensor:
    """DataInf damping per layer: λ_l = scale · mean_i ‖g_il‖² / D_l (sq_norms: [n, L])."""
    return scale * sq_norms.double().mean(0) / torch.as_tensor(dims, dtype=torch.float64)
