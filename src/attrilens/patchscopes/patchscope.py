"""`Patchscope`: read a hidden state of a source model and patch f(h) into a target prompt (Ghandeharioun et al. 2024).

A query is (source ids, layer ℓ, position i) → h → f(h) → (target ids, layer ℓ*, position i*), read at the target's
`read_position` (default: its last token). Many queries run in a few forwards: one batched source pass reads every
needed layer; target rows that share a prompt reuse one KV-cached prefix up to the earliest patched position and
compute only the rest, each row with its own patch; rows with different prompts are left-padded together.
Positions count from 0 inside a row's own tokens; negative positions count from its end (-1 = last token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch
from attrilens.patchscopes.mappings import Mapping, as_mapping
from attrilens.patchscopes.result import Cell, InspectResult
from attrilens.results import Cost, Timer


@dataclass(frozen=True)
class Query:
    """One patch: source (ids, layer, position) → target (ids, layer, position), read at `read_position`."""

    source_ids: tuple[int, ...]
    layer: int
    position: int
    target_ids: tuple[int, ...]
    target_layer: int
    target_position: int = -1
    read_position: int = -1


def resolve_position(position: int, n: int, what: str) -> int:
    """Index 0..n-1 of `position` in a prompt of n tokens (negative counts from the end); out of range is an error."""
    if not -n <= position < n:
        raise AttrilensError(
            f"The {what} position {position} is beyond the prompt's {n} tokens. Use 0..{n - 1}, or -{n}..-1 to "
            "count from the end."
        )
    return position % n


def encode_target(lm: LM, text: str) -> list[int]:
    """Token ids of a target prompt: plain tokenisation (no chat template; a target is a pattern, not a chat)."""
    if not text:
        raise AttrilensError("The target prompt is empty. Pass a non-empty target prompt.")
    ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"]
    lm.check_length(len(ids), "target prompt")
    return list(ids)


def placeholder_position(lm: LM, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Target ids of `text` and the index of the last token overlapping characters [start, end) (the placeholder)."""
    enc = lm.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    hits = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    if not hits:
        raise AttrilensError(f"No token of {text!r} covers characters {start}..{end}. Put the placeholder on its own word.")
    return list(enc["input_ids"]), hits[-1]


def prompt_ids(value: str | Sequence[int], encode: Callable[[str], list[int]]) -> tuple[int, ...]:
    """Token ids of a prompt given as text (through `encode`) or as ids (checked non-empty)."""
    if isinstance(value, str):
        return tuple(encode(value))
    ids = tuple(int(t) for t in value)
    if not ids:
        raise AttrilensError("A prompt has no tokens. Pass at least one token.")
    return ids


@dataclass(frozen=True)
class SourcePrompt:
    """A source prompt's ids and where the user's own text lies in them ([start, end): inside a chat template
    when one is in use), so that positions a user gives index their text, never template tokens."""

    ids: tuple[int, ...]
    start: int
    end: int

    def resolve(self, position: int) -> int:
        """The sequence index of the user's position (negative counts from the end of the user's text)."""
        return self.start + resolve_position(position, self.end - self.start, "source")

    def positions(self) -> list[int]:
        """Every sequence index of the user's text."""
        return list(range(self.start, self.end))


def source_prompt(lm: LM, prompt: str | Sequence[int]) -> SourcePrompt:
    """The source prompt as the model reads it; text goes through the chat template when `lm` uses one."""
    if isinstance(prompt, str) and lm.use_chat_template:
        ids, start, end = lm.prompt_span(prompt)
        return SourcePrompt(tuple(ids), start, end)
    ids = prompt_ids(prompt, lm.encode_prompt)
    return SourcePrompt(ids, 0, len(ids))


def top_tokens(lm: LM, logits: torch.Tensor, k: int) -> list[list[dict]]:
    """Top-k next tokens with probabilities for each row of [n, V] logits."""
    probs = torch.softmax(logits.float(), dim=-1)
    p, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[{"token": lm.tokenizer.decode([int(t)]), "prob": float(q)} for q, t in zip(pr, ir, strict=True)]
            for pr, ir in zip(p.tolist(), idx.tolist(), strict=True)]


class Patchscope:
    """Patch states of `source` into prompts run by `target` (default: the same model) through `mapping`."""

    def __init__(self, source: LM, target: LM | None = None, mapping: Mapping | Callable | None = None,
                 *, chunk_size: int = 64, progress: bool = True):
        self.source = source
        self.target = target if target is not None else source
        if mapping is None and self.source.d_model != self.target.d_model:
            raise AttrilensError(
                f"The source model's width {self.source.d_model} differs from the target's {self.target.d_model} and no "
                "mapping was given. Pass mapping=fit_layer_maps(source, rows, pairs, target=target) or another map."
            )
        self.mapping = as_mapping(mapping)
        for attr, want, who in (("in_width", self.source.d_model, "source"), ("out_width", self.target.d_model, "target")):
            have = getattr(self.mapping, attr, None)
            if have is not None and have != want:
                raise AttrilensError(
                    f"The mapping's {attr.replace('_', ' ')} is {have} but the {who} model's width is {want}. "
                    "Fit the mapping between these two models."
                )
        if chunk_size < 1:
            raise AttrilensError(f"chunk_size must be positive, got {chunk_size}.")
        self.chunk_size = chunk_size
        self.progress = progress
        self.cost = Cost()

    # ------------------------------------------------------------------ queries
    def query(self, source_prompt_: str | Sequence[int], layer: int, position: int = -1, *,
              target_prompt: str | Sequence[int] | None = None, target_layer: int | None = None,
              target_position: int = -1, read_position: int | None = None) -> Query:
        """Build a validated Query (prompts as text or ids; target defaults to the source prompt at the same place)."""
        source = source_prompt(self.source, source_prompt_)
        sids, pos = source.ids, source.resolve(position)
        layer = self.source.check_layer(layer)
        if target_prompt is None:
            if self.target is not self.source and len(self.target.tokenizer) != len(self.source.tokenizer):
                raise AttrilensError("Reusing the source prompt as the target needs a shared tokenizer. Pass target_prompt.")
            tids, tpos = sids, pos if target_position == -1 else target_position
        else:
            tids, tpos = prompt_ids(target_prompt, lambda t: encode_target(self.target, t)), target_position
        tlayer = self.target.check_layer(layer if target_layer is None else target_layer)
        tpos = resolve_position(tpos, len(tids), "target")
        if read_position is None:
            read = tpos if target_prompt is None else len(tids) - 1
        else:
            read = resolve_position(read_position, len(tids), "read")
        if read < tpos:
            raise AttrilensError(
                f"Reading at target position {read} before the patched position {tpos} would not see the patch. "
                "Read at or after the patched position."
            )
        return Query(sids, layer, pos, tids, tlayer, tpos, read)

    # ------------------------------------------------------------------ source states
    @torch.no_grad()
    def source_states(self, queries: Sequence[Query]) -> torch.Tensor:
        """h for every query, [n, d_source]: one batched forward per chunk of distinct source prompts."""
        uniq: dict[tuple[int, ...], list[int]] = {}
        for k, q in enumerate(queries):
            uniq.setdefault(q.source_ids, []).append(k)
        out = torch.empty(len(queries), self.source.d_model)
        seqs = list(uniq)
        for start in range(0, len(seqs), self.chunk_size):
            chunk = seqs[start : start + self.chunk_size]
            layers = sorted({queries[k].layer for s in chunk for k in uniq[s]})
            run = self.source.run(chunk, read_layers=layers, padding_side="left")
            self.cost.add(1, sum(len(s) for s in chunk))
            for row, s in enumerate(chunk):
                for k in uniq[s]:
                    q = queries[k]
                    out[k] = run.hidden[q.layer][row, run.offsets[row] + q.position].float().cpu()
        return out

    def map_states(self, queries: Sequence[Query], h: torch.Tensor) -> torch.Tensor:
        """f(h) per query, grouped by (layer, target layer); checks the mapped width."""
        out = torch.empty(len(queries), self.target.d_model)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, q in enumerate(queries):
            groups.setdefault((q.layer, q.target_layer), []).append(k)
        for (layer, tlayer), idx in groups.items():
            mapped = self.mapping(h[idx], layer, tlayer)
            if not isinstance(mapped, torch.Tensor) or tuple(mapped.shape) != (len(idx), self.target.d_model):
                shape = tuple(mapped.shape) if isinstance(mapped, torch.Tensor) else type(mapped).__name__
                raise AttrilensError(
                    f"The mapping turned {len(idx)} states of width {h.shape[1]} into {shape}, not "
                    f"({len(idx)}, {self.target.d_model}). Make it return one target-width vector per row."
                )
            out[idx] = mapped.detach().float().cpu()
        return out

    # ------------------------------------------------------------------ target passes
    def _chunks(self, queries: Sequence[Query]) -> list[tuple[bool, list[int]]]:
        """Query index chunks: (shared prompt?, indices). Rows sharing a target prompt go together."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, q in enumerate(queries):
            groups.setdefault(q.target_ids, []).append(k)
        chunks, singles = [], []
        for idx in groups.values():
            if len(idx) == 1:
                singles += idx
                continue
            chunks += [(True, idx[s : s + self.chunk_size]) for s in range(0, len(idx), self.chunk_size)]
        chunks += [(False, singles[s : s + self.chunk_size]) for s in range(0, len(singles), self.chunk_size)]
        return chunks

    @torch.no_grad()
    def _target_logits(self, queries: Sequence[Query], values: torch.Tensor, shared: bool, idx: list[int]) -> torch.Tensor:
        lm = self.target
        qs = [queries[k] for k in idx]
        patches = [Patch(r, q.target_layer, q.target_position, values[k]) for r, (k, q) in enumerate(zip(idx, qs, strict=True))]
        ids = list(qs[0].target_ids)
        p = min(q.target_position for q in qs)
        if shared and p >= 1:
            prefix = lm.prefix_cache(ids[:p])
            ext = lm.extend(prefix, [p] * len(qs), [ids[p:]] * len(qs), patches=patches)
            self.cost.add(2, p + len(qs) * (len(ids) - p))
            return torch.stack([ext.logits[r, q.read_position - p] for r, q in enumerate(qs)]).float().cpu()
        run = lm.run([list(q.target_ids) for q in qs], patches=patches, padding_side="left")
        self.cost.add(1, sum(len(q.target_ids) for q in qs))
        return torch.stack([run.logits[r, run.offsets[r] + q.read_position] for r, q in enumerate(qs)]).float().cpu()

    def logits(self, queries: Sequence[Query]) -> torch.Tensor:
        """Target next-token logits [n, V] at each query's read position, with its patch applied."""
        from tqdm.auto import tqdm

        if not queries:
            raise AttrilensError("No queries to run. Pass at least one (layer, position).")
        with Timer(self.cost):
            values = self.map_states(queries, self.source_states(queries))
            out: list[torch.Tensor | None] = [None] * len(queries)
            chunks = self._chunks(queries)
            for shared, idx in tqdm(chunks, desc="patchscope", disable=not self.progress or len(chunks) < 2, leave=False):
                for k, row in zip(idx, self._target_logits(queries, values, shared, idx), strict=True):
                    out[k] = row
        return torch.stack(out)

    def generate(self, queries: Sequence[Query], *, max_new_tokens: int = 12, stop_strings: Sequence[str] = ("\n",)) -> list[str]:
        """Greedy continuation of each patched target prompt (patch applied at prefill, then KV-cached decoding)."""
        from tqdm.auto import tqdm

        lm = self.target
        for q in queries:
            if q.read_position != len(q.target_ids) - 1:
                raise AttrilensError("Generation continues after the target's last token; leave read_position at the end.")
        texts: list[str] = []
        with Timer(self.cost):
            values = self.map_states(queries, self.source_states(queries))
            starts = range(0, len(queries), self.chunk_size)
            for s in tqdm(starts, desc="patched generation", disable=not self.progress or len(starts) < 2, leave=False):
                qs = queries[s : s + self.chunk_size]
                patches = [Patch(r, q.target_layer, q.target_position, values[s + r]) for r, q in enumerate(qs)]
                outs = lm.generate_ids([list(q.target_ids) for q in qs], max_new_tokens=max_new_tokens, patches=patches,
                                       stop_strings=stop_strings)
                self.cost.add(1 + max((len(o) for o in outs), default=0), sum(len(q.target_ids) + len(o) for q, o in zip(qs, outs, strict=True)))
                for o in outs:
                    text = lm.tokenizer.decode(o, clean_up_tokenization_spaces=False)
                    for stop in stop_strings:
                        text = text.split(stop)[0] if stop else text
                    texts.append(text)
        return texts

    # ------------------------------------------------------------------ results
    def inspect(self, queries: Sequence[Query], *, preset: str = "custom", source_prompt: str | None = None,
                target_prompt: str | None = None, top_k: int = 5, max_new_tokens: int = 0) -> InspectResult:
        """Run queries (all from one source prompt) into an InspectResult; generate too when max_new_tokens > 0."""
        if top_k < 1:
            raise AttrilensError(f"top_k must be at least 1, got {top_k}.")
        if len({q.source_ids for q in queries}) > 1:
            raise AttrilensError("An InspectResult holds one source prompt; run other prompts in separate calls.")
        self.cost = Cost()
        tops = top_tokens(self.target, self.logits(queries), top_k)
        gens = self.generate(queries, max_new_tokens=max_new_tokens) if max_new_tokens > 0 else [None] * len(queries)
        sids = list(queries[0].source_ids)
        tok = self.source.tokenizer
        cells = [Cell(q.layer, q.position, q.target_layer, t, g) for q, t, g in zip(queries, tops, gens, strict=True)]
        tp = target_prompt if target_prompt is not None else self.target.tokenizer.decode(list(queries[0].target_ids))
        return InspectResult(
            preset=preset,
            source_prompt=source_prompt if source_prompt is not None else tok.decode(sids),
            source_tokens=[tok.decode([t]) for t in sids],
            target_prompt=tp,
            cells=cells,
            cost=self.cost,
        )


def sweep(
    patchscope: Patchscope,
    prompt: str | Sequence[int],
    target_prompt: str | Sequence[int] | None = None,
    *,
    over: str = "layer_position",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    target_layers: Sequence[int] | None = None,
    target_position: int = -1,
    top_k: int = 5,
    max_new_tokens: int = 0,
    preset: str = "sweep",
) -> InspectResult:
    """All (ℓ, i) cells (ℓ* = ℓ) or all (ℓ, ℓ*) cells at `positions`, batched in bounded chunks with a progress bar.

    With no `target_prompt` the target is the source prompt itself, patched and read at the same position.
    """
    src, tgt = patchscope.source, patchscope.target
    source = source_prompt(src, prompt)
    sids = source.ids
    layers = list(range(src.n_layers + 1)) if layers is None else list(layers)
    if over == "layer_position":
        positions = source.positions() if positions is None else [source.resolve(i) for i in positions]
        pairs = [(ell, i, ell if target_layers is None else t) for ell in layers for i in positions
                 for t in (target_layers or [None])]
    elif over == "layer_layer":
        positions = [source.resolve(i) for i in ([-1] if positions is None else positions)]
        tls = list(range(tgt.n_layers + 1)) if target_layers is None else list(target_layers)
        pairs = [(ell, i, t) for ell in layers for i in positions for t in tls]
    else:
        raise AttrilensError(f"over must be 'layer_position' or 'layer_layer', not {over!r}.")
    if not pairs:
        raise AttrilensError("The sweep has no cells. Pass at least one layer and one position.")
    queries = [patchscope.query(sids, ell, i, target_prompt=target_prompt, target_layer=t, target_position=target_position)
               for ell, i, t in pairs]
    return patchscope.inspect(queries, preset=preset, source_prompt=prompt if isinstance(prompt, str) else None,
                              target_prompt=target_prompt if isinstance(target_prompt, str) else None,
                              top_k=top_k, max_new_tokens=max_new_tokens)
