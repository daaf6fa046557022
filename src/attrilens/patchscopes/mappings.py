"""Mappings f from a source hidden state to a target one: identity, least-squares affine maps, tuned lens, callables.

A mapping is called as ``f(h, source_layer, target_layer)`` with ``h`` of shape [N, d_source] and returns
[N, d_target]. Plain user callables take ``h`` alone (see `as_mapping`).
"""

from __future__ import annotations

import inspect as _pyinspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM


class Mapping:
    """Base of every mapping: maps [N, d_in] source states at `source_layer` to [N, d_out] for `target_layer`."""

    in_width: int | None = None
    out_width: int | None = None
    name: str = "mapping"

    def __call__(self, h: torch.Tensor, source_layer: int, target_layer: int) -> torch.Tensor:
        raise NotImplementedError


class Identity(Mapping):
    """f(h) = h: the source state is patched unchanged (source and target must have the same width)."""

    name = "identity"

    def __call__(self, h: torch.Tensor, source_layer: int, target_layer: int) -> torch.Tensor:
        return h


class CallableMapping(Mapping):
    """Any user function of h (or of h, source_layer, target_layer) used as a mapping."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", "callable")
        try:
            params = _pyinspect.signature(fn).parameters
            self._with_layers = len(params) >= 3
        except (TypeError, ValueError):
            self._with_layers = False

    def __call__(self, h: torch.Tensor, source_layer: int, target_layer: int) -> torch.Tensor:
        out = self.fn(h, source_layer, target_layer) if self._with_layers else self.fn(h)
        if not isinstance(out, torch.Tensor):
            raise AttrilensError(f"The mapping {self.name!r} returned {type(out).__name__}, not a tensor. Return a [N, d] tensor.")
        return out


def as_mapping(f: Mapping | Callable | None) -> Mapping:
    """Normalise None (identity), a Mapping, or a plain callable into a Mapping."""
    if f is None:
        return Identity()
    if isinstance(f, Mapping):
        return f
    if callable(f):
        return CallableMapping(f)
    raise AttrilensError(f"A mapping must be None, a Mapping or a callable, not {type(f).__name__}.")


class AffineMap(Mapping):
    """f(h) = h Wᵀ + b, fitted by least squares (`fit_affine`)."""

    name = "affine"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        if weight.ndim != 2 or bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
            raise AttrilensError(
                f"An affine map needs weight [d_out, d_in] and bias [d_out], got {tuple(weight.shape)} and "
                f"{tuple(bias.shape)}. Fit one with fit_affine."
            )
        self.weight = weight.float()
        self.bias = bias.float()
        self.out_width, self.in_width = weight.shape

    def __call__(self, h: torch.Tensor, source_layer: int = 0, target_layer: int = 0) -> torch.Tensor:
        if h.shape[-1] != self.in_width:
            raise AttrilensError(
                f"The affine map takes vectors of width {self.in_width} but got width {h.shape[-1]}. "
                "Fit the map on states of the source model and layer you patch from."
            )
        return h.float() @ self.weight.to(h.device).T + self.bias.to(h.device)


def fit_affine(x: torch.Tensor, y: torch.Tensor, *, ridge: float = 1e-6) -> AffineMap:
    """Least-squares affine map y ≈ x Wᵀ + b over paired rows (ridge-regularised normal equations, float64)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise AttrilensError(
            f"fit_affine needs paired matrices [N, d_in] and [N, d_out], got {tuple(x.shape)} and {tuple(y.shape)}. "
            "Pass states of the same tokens."
        )
    if x.shape[0] < 2:
        raise AttrilensError("fit_affine needs at least 2 paired rows. Collect states over more tokens.")
    xd = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], dim=1)
    gram = xd.T @ xd
    scale = gram.diagonal().mean().clamp(min=1e-12)
    reg = ridge * scale * torch.eye(gram.shape[0], dtype=torch.float64, device=x.device)
    reg[-1, -1] = 0.0  # never shrink the bias
    sol = torch.linalg.solve(gram + reg, xd.T @ y.double())  # [d_in + 1, d_out]
    return AffineMap(sol[:-1].T.float().contiguous(), sol[-1].float().contiguous())


class LayerMaps(Mapping):
    """One mapping per (source layer, target layer) pair, e.g. least-squares maps of every layer into the last."""

    name = "affine"

    def __init__(self, maps: dict[tuple[int, int], Mapping]):
        self.maps = dict(maps)

    def __call__(self, h: torch.Tensor, source_layer: int, target_layer: int) -> torch.Tensor:
        m = self.maps.get((source_layer, target_layer))
        if m is None:
            raise AttrilensError(
                f"No map fitted from source layer {source_layer} to target layer {target_layer}; fitted pairs: "
                f"{sorted(self.maps)}. Fit that pair or inspect a fitted one."
            )
        return m(h, source_layer, target_layer)


# ---------------------------------------------------------------------------------------------- states
def token_rows(lm: LM, texts: Sequence[str], *, max_tokens: int = 128) -> list[list[int]]:
    """Token-id rows of texts as the model reads plain text (no chat template, but its BOS when its tokenizer adds
    one: Gemma without BOS is far off its training distribution), truncated to `max_tokens`, rows shorter than 2
    dropped."""
    rows = []
    for t in texts:
        ids = lm.tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            rows.append(list(ids))
    if not rows:
        raise AttrilensError("None of the texts has 2 or more tokens. Pass longer texts.")
    return rows


@torch.no_grad()
def collect_states(lm: LM, rows: Sequence[Sequence[int]], layers: Sequence[int], *, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Residual states of every real token of `rows` at `layers`, as {layer: [N, d]} (rows concatenated in order)."""
    out: dict[int, list[torch.Tensor]] = {lm.check_layer(x): [] for x in layers}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        run = lm.run(chunk, read_layers=list(out), padding_side="right")
        for layer in out:
            h = run.hidden[layer]
            out[layer].append(torch.cat([h[r, : len(s)] for r, s in enumerate(chunk)]).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def fit_layer_maps(
    source: LM,
    rows: Sequence[Sequence[int]],
    pairs: Sequence[tuple[int, int]],
    *,
    target: LM | None = None,
    ridge: float = 1e-6,
) -> LayerMaps:
    """Least-squares affine maps for (source layer, target layer) pairs, fitted on the states of the same tokens.

    With `target` another model, both must tokenize alike (the rows are fed to both).
    """
    target = target or source
    if target is not source and len(target.tokenizer) != len(source.tokenizer):
        raise AttrilensError(
            "Cross-model maps are fitted on the same tokens, but the two models have different vocabularies "
            f"({len(source.tokenizer)} vs {len(target.tokenizer)}). Use models that share a tokenizer."
        )
    xs = collect_states(source, rows, sorted({a for a, _ in pairs}))
    ys = xs if target is source else collect_states(target, rows, sorted({b for _, b in pairs}))
    return LayerMaps({(a, b): fit_affine(xs[source.check_layer(a)], ys[target.check_layer(b)], ridge=ridge)
                      for a, b in pairs})


# ---------------------------------------------------------------------------------------------- tuned lens
class TunedLens(Mapping):
    """Per-layer translators h ↦ h + A_ℓ h + b_ℓ into the last layer's space (Belrose et al. 2023).

    A_ℓ, b_ℓ start at zero (the logit lens); trained with KL(final ∥ lens). Only target layer L is valid.
    """

    name = "tuned_lens"

    def __init__(self, n_layers: int, d_model: int, fingerprint: str = ""):
        self.n_layers, self.d_model, self.fingerprint = n_layers, d_model, fingerprint
        self.in_width = self.out_width = d_model
        self.weight = torch.zeros(n_layers, d_model, d_model)
        self.bias = torch.zeros(n_layers, d_model)
        self.train_info: dict[str, float] = {}

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """h + A_ℓ h + b_ℓ (layer L is the identity)."""
        if layer == self.n_layers:
            return h
        return h + h @ self.weight[layer].T.to(h.device, h.dtype) + self.bias[layer].to(h.device, h.dtype)

    def __call__(self, h: torch.Tensor, source_layer: int, target_layer: int) -> torch.Tensor:
        if target_layer != self.n_layers:
            raise AttrilensError(
                f"A tuned lens maps into the last layer ({self.n_layers}), not layer {target_layer}. "
                f"Use target layer {self.n_layers}."
            )
        if not 0 <= source_layer <= self.n_layers:
            raise AttrilensError(f"The tuned lens has layers 0..{self.n_layers}, not {source_layer}.")
        if h.shape[-1] != self.d_model:
            raise AttrilensError(f"The tuned lens takes width {self.d_model}, got {h.shape[-1]}. Use the model it was trained for.")
        with torch.no_grad():
            return self.translate(h.float(), source_layer)

    def check_model(self, lm: LM) -> None:
        """Raise unless this lens was trained for `lm` (same layer count, width and weights)."""
        if (lm.n_layers, lm.d_model) != (self.n_layers, self.d_model):
            raise AttrilensError(
                f"This tuned lens is for {self.n_layers} layers × width {self.d_model}, the model has "
                f"{lm.n_layers} × {lm.d_model}. Train a lens for this model with TunedLens.train."
            )
        if self.fingerprint and self.fingerprint != lm.fingerprint():
            raise AttrilensError("This tuned lens was trained for other weights. Train a lens for this model with TunedLens.train.")

    # -------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the translators as safetensors (metadata: layers, width, model fingerprint)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"n_layers": str(self.n_layers), "d_model": str(self.d_model), "fingerprint": self.fingerprint,
                "kind": "attrilens/tuned-lens/v1"}
        save_file({"weight": self.weight.detach().contiguous(), "bias": self.bias.detach().contiguous()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, lm: LM | None = None) -> TunedLens:
        """Read a lens written by `save` (and check it belongs to `lm` when given)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise AttrilensError(f"Tuned lens file {str(path)!r} does not exist. Train one with TunedLens.train.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except Exception as exc:  # noqa: BLE001 - the message is what the user needs
            raise AttrilensError(f"{str(path)!r} is not a tuned-lens safetensors file ({exc}). Pass a file written by TunedLens.save.") from exc
        if meta.get("kind") != "attrilens/tuned-lens/v1":
            raise AttrilensError(f"{str(path)!r} is not a tuned lens (metadata kind {meta.get('kind')!r}). Pass a file written by TunedLens.save.")
        lens = cls(int(meta["n_layers"]), int(meta["d_model"]), meta.get("fingerprint", ""))
        lens.weight, lens.bias = weight.float(), bias.float()
        if lm is not None:
            lens.check_model(lm)
        return lens

    # -------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        lm: LM,
        texts: Sequence[str],
        *,
        steps: int = 300,
        batch_tokens: int = 512,
        lr: float = 0.5,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        max_tokens: int = 128,
        seed: int = 0,
        progress: bool = True,
    ) -> TunedLens:
        """Fit every layer's translator with KL(final ∥ lens), SGD with Nesterov momentum, decay toward identity.

        States are collected once (one forward per batch of texts); each step samples `batch_tokens` tokens and
        updates all layers. Weight decay on A, b pulls each translator toward the identity (the logit lens).
        """
        from tqdm.auto import tqdm

        if steps < 1 or batch_tokens < 1:
            raise AttrilensError(f"steps and batch_tokens must be positive, got {steps} and {batch_tokens}.")
        rows = token_rows(lm, texts, max_tokens=max_tokens)
        states = collect_states(lm, rows, range(lm.n_layers + 1))
        n = states[0].shape[0]
        lens = cls(lm.n_layers, lm.d_model, lm.fingerprint())
        params = [lens.weight.requires_grad_(True), lens.bias.requires_grad_(True)]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * 0.5
                                                  * (1 + math.cos(math.pi * s / steps)))
        g = torch.Generator().manual_seed(seed)
        frozen = [(p, p.requires_grad) for p in lm.model.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        bar = tqdm(range(steps), desc="tuned lens", disable=not progress, leave=False)
        try:
            loss = lens._fit(lm, states, bar, opt, sched, g, batch_tokens, params)
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        lens.weight = lens.weight.detach()
        lens.bias = lens.bias.detach()
        lens.train_info = {"tokens": n, "steps": steps, "final_kl": loss}
        return lens

    def _fit(self, lm: LM, states, bar, opt, sched, g, batch_tokens: int, params) -> float:
        n = states[0].shape[0]
        loss = torch.zeros(())
        for _ in bar:
            idx = torch.randint(0, n, (min(batch_tokens, n),), generator=g)
            with torch.no_grad():
                final = torch.log_softmax(lm.unembed(states[lm.n_layers][idx].to(lm.device)).float(), -1)
            loss = 0.0
            for layer in range(lm.n_layers):
                h = self.translate(states[layer][idx].to(lm.device), layer)
                logp = torch.log_softmax(lm.unembed(h).float(), -1)
                loss = loss + torch.sum(final.exp() * (final - logp), -1).mean()
            loss = loss / lm.n_layers
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(kl=f"{loss.item():.3f}")
        return float(loss.item())

