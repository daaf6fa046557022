"""Per-example loss gradients of the weight matrices of a causal LM, projected to features.

Parameters: the weight of every `nn.Linear` and transformers `Conv1D` (GPT-2 stores it transposed; features
always use the (out, in) orientation), including the unembedding as used by the output layer (when tied, its
use as input embedding is not included), or only the LoRA matrices of a peft-injected model. Embeddings,
norms and biases are left out, as in LoGra.

Loss of an example: Σ_t m_t · (−log p(x_t | x_<t)) with m_t = 1 on the tokens that count (all but the first
of a training block; the chosen response tokens of a query). Sequences are right-padded without an attention
mask: with causal attention real tokens never see the padding, and padding positions carry no loss.

Two paths give the same features:
- fast (`Featurizer.features`): one forward and one backward per batch; hooks keep each layer's input x_t and
  output gradient δ_t; the per-example gradient is G = Σ_t δ_t x_tᵀ, so P_L G P_Rᵀ = Σ_t (P_L δ_t)(P_R x_t)ᵀ
  never forms G (LoGra). A row × column factored correction (`FactoredScale`, Adafactor-style second moments)
  keeps that form: (r ⊗ c) ⊙ G = Σ_t (r ⊙ δ_t)(c ⊙ x_t)ᵀ. With an elementwise correction G ⊘ √v the product
  does not factor, and G is formed one layer at a time for the batch (in chunks of rows for large layers);
- reference (`Featurizer.features_vmap`): `torch.func.vmap(grad(loss))` over `functional_call`, full G, then
  the same correction and projection.

This module hooks into the model's modules because `LM` has no gradient API yet (see the report).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.projection import LayerProjection, feature_dims, make_projections, project_full


@dataclass(frozen=True)
class FactoredScale:
    """A rank-one per-weight scale r cᵀ (out × in): what a row/column factored (Adafactor-style) correction is."""

    row: torch.Tensor  # [out]
    col: torch.Tensor  # [in]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row.shape[0], self.col.shape[0])

    def full(self) -> torch.Tensor:
        """The dense out × in scale (for the reference path and tests)."""
        return self.row[:, None] * self.col[None, :]


Scale = torch.Tensor | FactoredScale  # elementwise (out × in) or factored


@dataclass(frozen=True)
class Example:
    """Token ids and which of them count in the loss (mask[t] = 1: position t is predicted from ids[:t])."""

    ids: list[int]
    mask: list[float]
    name: str = ""

    @classmethod
    def block(cls, ids: Sequence[int], name: str = "") -> Example:
        """A training block: every token after the first is a target."""
        return cls(list(ids), [0.0] + [1.0] * (len(ids) - 1), name)

    @classmethod
    def response(cls, prompt_ids: Sequence[int], response_ids: Sequence[int], tokens: Sequence[int] | None = None,
                 name: str = "") -> Example:
        """A query: the prompt then the response; only the chosen response tokens (default all) count."""
        n = len(response_ids)
        chosen = range(n) if tokens is None else tokens
        mask = [0.0] * (len(prompt_ids) + n)
        for t in chosen:
            if not -n <= t < n:
                raise AttrilensError(f"Token index {t} is outside the response's {n} tokens. "
                                     f"Pass indices in 0..{n - 1}, or -{n}..-1 to count from the end.")
            mask[len(prompt_ids) + t % n] = 1.0
        return cls(list(prompt_ids) + list(response_ids), mask, name)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def has_lora(model: nn.Module) -> bool:
    """Whether the model carries LoRA matrices (a peft adapter loaded into it)."""
    return any(".lora_A." in name for name, _ in model.named_modules())


def weight_modules(model: nn.Module, params: str = "linear") -> dict[str, nn.Module]:
    """Modules whose weight is featurised: every Linear/Conv1D ("linear") or the LoRA A/B matrices ("lora")."""
    if params not in ("linear", "lora"):
        raise AttrilensError(f"Unknown parameter selection {params!r}. Use 'linear' or 'lora'.")
    out = {}
    for name, m in model.named_modules():
        if not (isinstance(m, nn.Linear) or _is_conv1d(m)):
            continue
        is_lora = ".lora_A." in name or ".lora_B." in name
        if params == "lora" and not is_lora:
            continue
        if params == "linear" and is_lora:
            continue
        out[name] = m
    if not out:
        raise AttrilensError(f"The model has no {'LoRA' if params == 'lora' else 'linear'} weight matrices to featurise. "
                             + ("Load the LoRA adapter into the model first." if params == "lora" else ""))
    return out


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or Conv1D weight."""
    w = module.weight
    return (w.shape[1], w.shape[0]) if _is_conv1d(module) else (w.shape[0], w.shape[1])


def _pad(examples: Sequence[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(examples), width), dtype=torch.float32)
    for r, e in enumerate(examples):
        if len(e.ids) != len(e.mask):
            raise AttrilensError(f"Example {e.name or r}: {len(e.ids)} tokens but {len(e.mask)} mask entries.")
        if len(e.ids) < 2 or not any(e.mask[1:]):
            raise AttrilensError(f"Example {e.name or r} has no token that counts in the loss. "
                                 "Pass at least two tokens and select at least one target token.")
        ids[r, : len(e.ids)] = torch.as_tensor(e.ids)
        w[r, : len(e.ids)] = torch.as_tensor(e.mask)
    return ids.to(device), w.to(device)


def _token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)
    return -logp.gather(-1, ids[..., 1:, None])[..., 0]


@contextlib.contextmanager
def _weights_require_grad(modules: dict[str, nn.Module]) -> Iterator[None]:
    before = {n: m.weight.requires_grad for n, m in modules.items()}
    try:
        for m in modules.values():
            m.weight.requires_grad_(True)
        yield
    finally:
        for n, m in modules.items():
            m.weight.requires_grad_(before[n])


# Largest per-layer gradient block formed at once on the elementwise-correction path (rows × out × in floats):
# a 49152-token unembedding of width 576 is 28 M floats per example, so a batch of 16 is cut into chunks.
G_CHUNK_FLOATS = 1 << 26


class Featurizer:
    """Projected (optionally optimizer-corrected) per-example gradient features of one model."""

    def __init__(self, lm: LM, *, params: str = "linear", proj_dim: int | None = 4096, seed: int = 0,
                 scales: dict[str, Scale] | None = None, allocation: str = "proportional"):
        self.lm = lm
        self.modules = weight_modules(lm.model, params)
        self.shapes = {n: weight_shape(m) for n, m in self.modules.items()}
        full = sum(o * i for o, i in self.shapes.values())
        if proj_dim is not None and proj_dim > full:
            raise AttrilensError(f"proj_dim {proj_dim} is more than this model's full gradient ({full} features). Pass "
                                 f"at most {full} (--proj-dim), or 0 / None for the full gradient itself.")
        self.projections: dict[str, LayerProjection] = make_projections(self.shapes, proj_dim, seed, allocation)
        self.dims = feature_dims(self.shapes, self.projections)
        self.dim = sum(self.dims.values())
        self.scales: dict[str, Scale] | None = None
        self.set_scales(scales)

    def set_scales(self, scales: dict[str, Scale] | None) -> None:
        """Use these per-weight scales (elementwise or factored, (out, in) orientation), or none."""
        if scales is not None:
            missing = [n for n in self.modules if n not in scales]
            if missing:
                raise AttrilensError(f"No second moments for {missing[:3]}. Pass the optimizer state of this model, "
                                     "or estimate the second moments from the corpus.")
            for n, s in scales.items():
                if n in self.shapes and tuple(s.shape) != self.shapes[n]:
                    raise AttrilensError(f"Second moments for {n} have shape {tuple(s.shape)}, the weight "
                                         f"{self.shapes[n]}. Pass the optimizer state saved with this model.")
        self.scales = scales

    def slices(self) -> dict[str, tuple[int, int]]:
        """Column range of each weight's features."""
        out, start = {}, 0
        for n, d in self.dims.items():
            out[n] = (start, start + d)
            start += d
        return out

    # ------------------------------------------------------------------ fast path
    def _layer_features(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        proj = self.projections[name]
        x, delta = x.float(), delta.float()
        scale = self.scales[name] if self.scales is not None else None
        if isinstance(scale, FactoredScale):
            delta = delta * scale.row.to(delta.device)
            x = x * scale.col.to(x.device)
            scale = None
        if scale is None and proj.left is not None:
            a = delta @ proj.left.T.to(delta.device)
            b = x @ proj.right.T.to(x.device)
            return torch.einsum("bto,bti->boi", a, b).reshape(x.shape[0], -1)
        out, inn = self.shapes[name]
        step = max(1, G_CHUNK_FLOATS // (out * inn))
        parts = []
        for r in range(0, x.shape[0], step):  # bound the memory of the per-example gradients formed at once
            g = torch.einsum("bto,bti->boi", delta[r : r + step], x[r : r + step])
            if scale is not None:
                g = g * scale.to(g.device)
            parts.append(project_full(g, proj))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def layer_features(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Features [B, dims[name]] of one weight from its input x [B, T, in] and output gradient δ [B, T, out]:
        what a hook on a trainer's own backward pass feeds in, one layer at a time (`training.capture`)."""
        return self._layer_features(name, x, delta)

    def captured_gradients(self, examples: Sequence[Example]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One forward and backward of Σ_examples Σ_t m_t · nll_t: each weight's (input x [B, T, in], output
        gradient δ [B, T, out]); example b's gradient of its own loss is Σ_t δ_bt x_btᵀ."""
        self.lm.model.eval()
        return self._capture(examples)

    def _capture(self, examples: Sequence[Example]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        lm = self.lm
        ids, w = _pad(examples, lm.tokenizer.pad_token_id or 0, lm.device)
        captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(name):
            def fn(module, args, output):
                if name in captured:
                    raise AttrilensError(f"Module {name} ran twice in one forward; its per-example gradient "
                                         "cannot be read from one input/output pair.")
                captured[name] = (args[0].detach(), output)
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]
        try:
            with torch.enable_grad(), _weights_require_grad(self.modules):
                logits = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                loss = (_token_nll(logits, ids) * w[:, 1:]).sum()
                names = list(self.modules)
                deltas = torch.autograd.grad(loss, [captured[n][1] for n in names])
        finally:
            for h in handles:
                h.remove()
        return {n: (captured[n][0], d) for n, d in zip(names, deltas, strict=True)}

    def project_captured(self, grads: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Features [B, dim] from `captured_gradients` of a batch (scaled and projected as `features` does), so
        several featurisers (e.g. projection sizes) can share one backward pass."""
        return torch.cat([self._layer_features(n, *grads[n]) for n in self.modules], dim=1)

    def _batch_features(self, examples: Sequence[Example]) -> torch.Tensor:
        return self.project_captured(self._capture(examples))

    def features(self, examples: Sequence[Example], *, batch_size: int = 16) -> torch.Tensor:
        """Features [N, dim] (fp32, CPU) by the fast path, batches of `batch_size` examples."""
        self.lm.model.eval()
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].ids), i))  # batch similar lengths
        out = torch.zeros(len(examples), self.dim)
        for start in range(0, len(examples), batch_size):
            rows = order[start : start + batch_size]
            chunk = [examples[i] for i in rows]
            out[rows] = check_finite(self._batch_features(chunk), chunk).cpu()
        return out

    # ------------------------------------------------------------------ reference path
    def full_gradients(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Per-example gradients {name: [B, out, in]} by torch.func vmap(grad) (load models with eager attention)."""
        from torch.func import functional_call, grad, vmap

        model = self.lm.model
        ids, w = _pad(examples, self.lm.tokenizer.pad_token_id or 0, self.lm.device)
        params = {f"{n}.weight": m.weight.detach() for n, m in self.modules.items()}

        ones = torch.ones((1, ids.shape[1]), dtype=torch.long, device=ids.device)

        def loss_fn(p, row_ids, row_w):
            logits = functional_call(model, p, (row_ids[None],), {"attention_mask": ones, "use_cache": False}, tie_weights=False,
                                     strict=False).logits
            return (_token_nll(logits, row_ids[None]) * row_w[None, 1:]).sum()

        grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, ids, w)
        out = {}
        for n, m in self.modules.items():
            g = grads[f"{n}.weight"]
            g = g.detach()
            out[n] = g.transpose(1, 2) if _is_conv1d(m) else g
        return out

    def features_vmap(self, examples: Sequence[Example], *, batch_size: int = 8) -> torch.Tensor:
        """Features [N, dim] by the vmap reference path (same correction and projection as the fast path)."""
        self.lm.model.eval()
        out = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            grads = self.full_gradients(chunk)
            feats = []
            for n in self.modules:
                g = grads[n].float()
                if self.scales is not None:
                    s = self.scales[n]
                    g = g * (s.full() if isinstance(s, FactoredScale) else s).to(g.device)
                feats.append(project_full(g, self.projections[n]))
            out.append(check_finite(torch.cat(feats, dim=1), chunk).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def features_loop(self, examples: Sequence[Example]) -> torch.Tensor:
        """Features by one backward pass per example (the naive baseline of the speed benchmark)."""
        return torch.cat([self.features([e], batch_size=1) for e in examples]) if examples else torch.zeros(0, self.dim)


def check_finite(features: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
    """Raise naming the first example whose gradient features contain NaN or inf."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        name = examples[r].name or f"#{r}"
        raise AttrilensError(f"The gradient of example {name} contains NaN or inf (the loss or the optimizer "
                             "correction overflowed). Check the model weights, or drop that example.")
    return features
