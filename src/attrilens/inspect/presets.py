"""Ready-made Patchscope configurations: logit lens, tuned lens, token identity, attribute extraction, entity
description, cross-model and multi-hop. Each returns an `InspectResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.inspect.lenses import LayerMaps, Mapping, TunedLens, fit_layer_maps, token_rows
from attrilens.inspect.patchscope import (
    Patchscope,
    Query,
    _ids,
    _norm_position,
    placeholder_position,
    sweep,
    top_tokens,
)
from attrilens.inspect.result import Cell, InspectResult
from attrilens.lm import LM
from attrilens.results import Cost, Timer

TOKEN_IDENTITY = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
BARE = "?"
PLACEHOLDER = "x"
GENERIC_DESCRIPTIONS = (
    ("Paris", "the capital city of France."),
    ("cat", "a small animal that people keep as a pet."),
    ("Mozart", "a composer who wrote many symphonies."),
)


def _source_ids(lm: LM, prompt: str | Sequence[int]) -> list[int]:
    return list(_ids(prompt, lm.encode_prompt))


def _lens_grid(lm: LM, prompt: str | Sequence[int], preset: str, translate, layers, positions, top_k: int) -> InspectResult:
    """Read every (layer, position) state through `translate` and the final norm + unembedding (one forward)."""
    cost = Cost()
    with Timer(cost):
        ids = _source_ids(lm, prompt)
        layers = list(range(lm.n_layers + 1)) if layers is None else [lm.check_layer(x) for x in layers]
        positions = list(range(len(ids))) if positions is None else [_norm_position(i, len(ids), "source") for i in positions]
        hs, _ = lm.hidden_states([ids], layers)
        cost.add(1, len(ids))
        cells = []
        with torch.no_grad():
            for layer in layers:
                h = translate(hs[layer][0, positions].float(), layer)
                for i, top in zip(positions, top_tokens(lm, lm.unembed(h), top_k), strict=True):
                    cells.append(Cell(layer, i, lm.n_layers, top))
    tok = lm.tokenizer
    text = prompt if isinstance(prompt, str) else tok.decode(ids)
    return InspectResult(preset, text, [tok.decode([t]) for t in ids], text, cells, cost)


def logit_lens(lm: LM, prompt: str | Sequence[int], *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """Final norm + unembedding of every (layer, position) state: S = T, ℓ* = L, f = identity (nostalgebraist 2020)."""
    return _lens_grid(lm, prompt, "logit_lens", lambda h, layer: h, layers, positions, top_k)


def tuned_lens(lm: LM, prompt: str | Sequence[int], lens: TunedLens | str | Path, *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """The logit lens after each layer's trained affine translator (Belrose et al. 2023)."""
    lens = lens if isinstance(lens, TunedLens) else TunedLens.load(lens, lm)
    lens.check_model(lm)
    return _lens_grid(lm, prompt, "tuned_lens", lambda h, layer: lens.translate(h, layer), layers, positions, top_k)


def token_identity(lm: LM, prompt: str | Sequence[int], *, bare: bool = False, layers: Sequence[int] | None = None,
                   positions: Sequence[int] | None = None, top_k: int = 5, max_new_tokens: int = 0,
                   target: LM | None = None, mapping: Mapping | None = None) -> InspectResult:
    """Patch each (ℓ, i) into the last token of the few-shot `cat -> cat ... ?` target (or a bare `?`) at ℓ* = ℓ."""
    ps = Patchscope(lm, target, mapping)
    return sweep(ps, prompt, BARE if bare else TOKEN_IDENTITY, layers=layers, positions=positions, top_k=top_k,
                 max_new_tokens=max_new_tokens, preset="token_identity_bare" if bare else "token_identity")


def relation_template(relation: str) -> str:
    """`The capital of x is` style target for a fact-world relation (its first statement template, cut at the value)."""
    from attrilens.demo.world import RELATIONS

    if relation not in RELATIONS:
        raise AttrilensError(f"Unknown relation {relation!r}. Choose from {sorted(RELATIONS)}.")
    template = RELATIONS[relation]["statements"][0]
    return template.split("{v}")[0].rstrip().format(e=PLACEHOLDER)


def placeholder_target(lm: LM, template: str, placeholder: str = PLACEHOLDER) -> tuple[list[int], int]:
    """Target ids of a template and the position of its placeholder word (its last token)."""
    import re

    hits = [m for m in re.finditer(rf"(?<!\w){re.escape(placeholder)}(?!\w)", template)]
    if not hits:
        raise AttrilensError(f"The target template {template!r} has no standalone {placeholder!r}. Mark the patched word with it.")
    m = hits[-1]
    return placeholder_position(lm, template, m.start(), m.end())


def _placeholder_queries(ps: Patchscope, prompt, template: str, layers, position: int, target_layers) -> list[Query]:
    tids, tpos = placeholder_target(ps.target, template)
    sids = _source_ids(ps.source, prompt)
    layers = list(range(ps.source.n_layers + 1)) if layers is None else list(layers)
    return [ps.query(sids, ell, position, target_prompt=tids, target_layer=ell if target_layers is None else t,
                     target_position=tpos) for ell in layers for t in (target_layers or [None])]


def attribute_extraction(lm: LM, prompt: str | Sequence[int], relation: str | None = None, *, template: str | None = None,
                         layers: Sequence[int] | None = None, position: int = -1, top_k: int = 5,
                         max_new_tokens: int = 6) -> InspectResult:
    """Patch the subject state (ℓ, i) into `The capital of x is` at x (ℓ* = ℓ) and read what follows."""
    if (relation is None) == (template is None):
        raise AttrilensError("Pass exactly one of relation (a fact-world relation) or template (a target with an 'x').")
    template = template or relation_template(relation)
    ps = Patchscope(lm)
    queries = _placeholder_queries(ps, prompt, template, layers, position, None)
    return ps.inspect(queries, preset="attribute_extraction", source_prompt=prompt if isinstance(prompt, str) else None,
                      target_prompt=template, top_k=top_k, max_new_tokens=max_new_tokens)


def description_template(world_dir: str | Path | None = None, n_shots: int = 3) -> str:
    """Few-shot `entity: description` lines ending in `x:` — from the fact world's facts when a world is given."""
    shots = list(GENERIC_DESCRIPTIONS)
    if world_dir is not None:
        from attrilens.demo.world import RELATIONS
        from attrilens.jsonl import load_jsonl

        facts = load_jsonl(Path(world_dir) / "facts.jsonl", require=("entity", "relation", "value"))
        by_entity: dict[str, list[dict]] = {}
        for f in facts:
            by_entity.setdefault(f["entity"], []).append(f)
        shots = []
        for entity, fs in list(by_entity.items())[:n_shots]:
            sents = [RELATIONS[f["relation"]]["statements"][0].format(e=entity, v=f["value"]) for f in fs[:2]]
            shots.append((entity, " ".join(sents)))
    return "".join(f"{e}: {d}\n" for e, d in shots[:n_shots]) + f"{PLACEHOLDER}:"


def entity_description(lm: LM, prompt: str | Sequence[int], *, layers: Sequence[int] | None = None, position: int = -1,
                       world_dir: str | Path | None = None, max_new_tokens: int = 16, top_k: int = 5) -> InspectResult:
    """Patch the entity state into the `x` of a few-shot description target and generate the description."""
    template = description_template(world_dir)
    ps = Patchscope(lm)
    queries = _placeholder_queries(ps, prompt, template, layers, position, None)
    return ps.inspect(queries, preset="entity_description", source_prompt=prompt if isinstance(prompt, str) else None,
                      target_prompt=template, top_k=top_k, max_new_tokens=max_new_tokens)


def layer_correspondence(source: LM, target: LM) -> list[tuple[int, int]]:
    """(ℓ, ℓ*) pairs at the same relative depth: ℓ* = round(ℓ · L*/L)."""
    return [(ell, round(ell * target.n_layers / source.n_layers)) for ell in range(source.n_layers + 1)]


def fit_cross_model(source: LM, target: LM, texts: Sequence[str], *, pairs: Sequence[tuple[int, int]] | None = None,
                    max_tokens: int = 128) -> LayerMaps:
    """Least-squares affine maps from source layers to target layers on the same tokens of `texts`."""
    rows = token_rows(source, texts, max_tokens=max_tokens)
    return fit_layer_maps(source, rows, pairs or layer_correspondence(source, target), target=target)


def cross_model(source: LM, target: LM, prompt: str | Sequence[int], *, mapping: LayerMaps | None = None,
                texts: Sequence[str] | None = None, positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """Patch the source (proxy) model's states, affinely mapped, into the target model at the same token and depth.

    Without `mapping`, maps are fitted on `texts` (same tokens through both models) for ℓ* = round(ℓ · L*/L).
    """
    if mapping is None:
        if not texts:
            raise AttrilensError("cross_model needs a fitted mapping or texts to fit one on. Pass mapping= or texts=.")
        mapping = fit_cross_model(source, target, texts)
    ps = Patchscope(source, target, mapping)
    sids = _source_ids(source, prompt)
    positions = list(range(len(sids))) if positions is None else list(positions)
    queries = [ps.query(sids, a, i, target_layer=b) for a, b in sorted(mapping.maps) for i in positions]
    return ps.inspect(queries, preset="cross_model", source_prompt=prompt if isinstance(prompt, str) else None,
                      top_k=top_k)


def multi_hop(lm: LM, hop1_prompt: str | Sequence[int], hop2_template: str, *, layer: int, target_layer: int,
              position: int = -1, top_k: int = 5, max_new_tokens: int = 6) -> InspectResult:
    """Patch the hop-1 answer state (ℓ, i) into the `x` of the hop-2 template at ℓ* and read the hop-2 answer."""
    ps = Patchscope(lm)
    queries = _placeholder_queries(ps, hop1_prompt, hop2_template, [layer], position, [target_layer])
    return ps.inspect(queries, preset="multi_hop", source_prompt=hop1_prompt if isinstance(hop1_prompt, str) else None,
                      target_prompt=hop2_template, top_k=top_k, max_new_tokens=max_new_tokens)
