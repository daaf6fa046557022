"""One forward of a padded batch with hooks that read and overwrite the residual stream (`Patch`, `RunOutput`),
and the residual states and logit lens built on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from attrilens.errors import AttrilensError
from attrilens.lm.prompts import Batch


@dataclass(frozen=True)
class Patch:
    """Overwrite the residual stream of batch row `row` at (`layer`, `position`) with `value` (shape [d_model])."""

    row: int
    layer: int
    position: int
    value: torch.Tensor


@dataclass
class RunOutput:
    """Logits of one forward (or extension), the residual states read, and the cache if one was kept."""

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    cache: object | None = None
    attention_mask: torch.Tensor | None = None
    lengths: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer [B, heads, queries, keys], when asked for


def _attentions(output) -> tuple[torch.Tensor, ...]:
    """The per-layer attention weights of a forward run with output_attentions (an error if the model gave none)."""
    att = getattr(output, "attentions", None)
    if not att or any(a is None for a in att):
        raise AttrilensError("This model returned no attention weights. Use a method that does not read them.")
    return tuple(att)


def output_cache(output) -> object:
    """The KV cache a forward returned, under either name transformers has used for it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class ForwardMixin:
    """`LM`'s forwards: patches and residual reads through block hooks, hidden states and the logit lens (mixed
    into `LM`)."""

    def check_layer(self, layer: int) -> int:
        L = self.n_layers
        if not -(L + 1) <= layer <= L:
            raise AttrilensError(f"Layer {layer} is out of range: this model has layers 0..{L} (or -{L + 1}..-1).")
        return layer % (L + 1)

    @contextlib.contextmanager
    def _hooks(
        self,
        read_layers: Sequence[int],
        writes: dict[int, list[tuple[int, int, int, torch.Tensor]]],
        store: dict[int, torch.Tensor],
        applied: list[int],
    ) -> Iterator[None]:
        """Hooks that read (whole chunk) and overwrite the residual stream.

        `writes` maps layer -> [(patch index, row, column in this chunk, vector)]; `applied` counts how often
        each patch landed, so a patch that never applies is caught instead of silently doing nothing.
        """
        wanted = set(read_layers) | set(writes)
        handles = []

        def edit(layer: int, h: torch.Tensor) -> torch.Tensor:
            if writes.get(layer):
                h = h.clone()
                for k, row, col, value in writes[layer]:
                    h[row, col] = value.to(h.dtype)
                    applied[k] += 1
            if layer in read_layers:
                store[layer] = h
            return h

        def pre_hook(module, args, kwargs):
            if args:
                return (edit(0, args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = edit(0, kwargs["hidden_states"])
            return args, kwargs

        def make_post(layer: int):
            def post_hook(module, args, output):
                if isinstance(output, torch.Tensor):
                    return edit(layer, output)
                if isinstance(output, tuple):
                    return (edit(layer, output[0]), *output[1:])
                raise AttrilensError(
                    f"Block output of type {type(output).__name__} is not understood; cannot read or patch layer {layer}."
                )

            return post_hook

        try:
            if 0 in wanted:
                handles.append(self.arch.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            for layer in sorted(wanted - {0}):
                handles.append(self.arch.blocks[layer - 1].register_forward_hook(make_post(layer)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _normalise_patches(self, patches: Sequence[Patch], lengths: Sequence[int], n_rows: int) -> list[Patch]:
        out = []
        for p in patches:
            if not 0 <= p.row < n_rows:
                raise AttrilensError(f"Patch row {p.row} is outside the batch of {n_rows} rows.")
            layer = self.check_layer(p.layer)
            n = lengths[p.row]
            if not -n <= p.position < n:
                raise AttrilensError(
                    f"Patch position {p.position} is beyond row {p.row}'s {n} tokens. "
                    "Positions are token indices in that row's sequence; negative ones count from its end."
                )
            value = p.value.reshape(-1)
            if value.shape[0] != self.d_model:
                raise AttrilensError(
                    f"Patch vector has size {value.shape[0]} but this model's residual width is {self.d_model}. "
                    "Map the state with a fitted mapping first."
                )
            out.append(Patch(p.row, layer, p.position % n, value.to(self.device)))
        return out

    @torch.no_grad()
    def run(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        padding_side: str = "right",
        keep_cache: bool = False,
        attentions: bool = False,
    ) -> RunOutput:
        """One batched forward over token-id rows; read residual states and apply per-row patches (and return the
        attention weights, computed by eager attention, when asked)."""
        batch = self.pad_batch(sequences, padding_side=padding_side)
        for n in batch.lengths:
            self.check_length(n, "sequence")
        return self._forward(batch, read_layers=read_layers, patches=patches, keep_cache=keep_cache,
                             attentions=attentions)

    def _forward(
        self,
        batch: Batch,
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        cache=None,
        cache_mask: torch.Tensor | None = None,
        chunk_start: Sequence[int] | int = 0,
        keep_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        attentions: bool = False,
    ) -> RunOutput:
        """One forward of a padded batch (continuing `cache` when given); with `logits_at` ([B, K] columns of this
        chunk) the unembedding runs only there and the logits are [B, K, V] — a vocabulary-sized product per
        token is a fifth of a small model's cost."""
        from transformers import DynamicCache

        read = [self.check_layer(x) for x in read_layers]
        starts = [chunk_start] * len(batch.lengths) if isinstance(chunk_start, int) else list(chunk_start)
        full = [s + n for s, n in zip(starts, batch.lengths, strict=True)]
        plist = self._normalise_patches(patches, full, len(full))
        # A patch lands in this forward only if its position lies in this chunk (not in a cached prefix).
        writes: dict[int, list[tuple[int, int, int, torch.Tensor]]] = {}
        for k, p in enumerate(plist):
            if p.position >= starts[p.row]:
                col = batch.offsets[p.row] + p.position - starts[p.row]
                writes.setdefault(p.layer, []).append((k, p.row, col, p.value))
        store: dict[int, torch.Tensor] = {}
        applied = [0] * len(plist)
        mask = batch.attention_mask if cache_mask is None else torch.cat([cache_mask, batch.attention_mask], dim=1)
        if keep_cache and cache is None:
            cache = DynamicCache()
        extra = {self._cache_kwarg: cache}
        if logits_at is not None:
            extra["logits_to_keep"] = logits_at.to(batch.input_ids.device)
        if attentions:
            extra["output_attentions"] = True
        with torch.no_grad(), self._hooks(read, writes, store, applied), (
                self.eager_attention() if attentions else contextlib.nullcontext()):
            out = self.model(
                input_ids=batch.input_ids,
                attention_mask=mask,
                position_ids=batch.position_ids,
                use_cache=cache is not None,
                **extra,
            )
        for layer_writes in writes.values():
            for k, row, _, _ in layer_writes:
                if applied[k] != 1:
                    p = plist[k]
                    raise AttrilensError(
                        f"Patch at layer {p.layer}, position {p.position} of row {row} was applied {applied[k]} times "
                        "instead of once; the block hooks did not fire as expected for this architecture."
                    )
        return RunOutput(
            logits=out.logits,
            hidden=store,
            cache=output_cache(out) if cache is not None else None,
            attention_mask=mask,
            lengths=batch.lengths,
            offsets=batch.offsets,
            attentions=_attentions(out) if attentions else None,
        )

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Eager attention (the implementation that returns weights) for the duration, then the original again."""
        before = self.model.config._attn_implementation
        if before != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if before != "eager":
                self.model.set_attn_implementation(before)

    # ------------------------------------------------------------------ hidden states
    @torch.no_grad()
    def hidden_states(
        self, sequences: Sequence[Sequence[int]], layers: Sequence[int] | None = None, *, padding_side: str = "right"
    ) -> tuple[dict[int, torch.Tensor], RunOutput]:
        """Residual states for every requested layer (default: all 0..L), as {layer: [B, T, d]} padded tensors."""
        layers = list(range(self.n_layers + 1)) if layers is None else list(layers)
        out = self.run(sequences, read_layers=layers, padding_side=padding_side)
        return {self.check_layer(k): v for k, v in out.hidden.items()}, out

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from a residual state of the last layer's kind: final norm, then unembedding (the logit lens)."""
        if self.arch.final_norm is not None:
            h = self.arch.final_norm(h)
        logits = self.arch.unembed(h)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
