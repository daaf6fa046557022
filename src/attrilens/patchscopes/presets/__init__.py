"""Ready-made Patchscope configurations, one registered class per file, found by name in `PRESETS`.

`run(name, lm, prompt, **options)` runs any of them with the CLI's option names; the functions below (`logit_lens`,
`token_identity`, `attribute_extraction`, ...) are the same presets with typed arguments. Each returns an
`InspectResult` that records the preset's hyphenated name. Adding a preset is one file: a `Preset` subclass with
its `Options` dataclass, registered with ``@PRESETS.register("my-preset")``.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrilens.errors import AttrilensError
from attrilens.patchscopes.mappings import LayerMaps, Mapping, TunedLens

# Import order = registration order = the order the CLI lists the presets.
# isort: off
from attrilens.patchscopes.presets.base import (
    PLACEHOLDER,
    PRESETS,
    GridOptions,
    Preset,
    fit_cross_model,
    layer_correspondence,
    placeholder_target,
    run_preset,
)
from attrilens.patchscopes.presets.logit import LogitLensPreset
from attrilens.patchscopes.presets.tuned import TunedLensPreset
from attrilens.patchscopes.presets.identity import BARE, TOKEN_IDENTITY, BareTokenIdentityPreset, TokenIdentityPreset
from attrilens.patchscopes.presets.attribute import GENERIC_RELATIONS, ONE_TARGET, AttributeExtractionPreset
from attrilens.patchscopes.presets.description import GENERIC_DESCRIPTIONS, EntityDescriptionPreset
from attrilens.patchscopes.presets.description import description_template
from attrilens.patchscopes.presets.crossmodel import CrossModelPreset
from attrilens.patchscopes.presets.multihop import MultiHopPreset
from attrilens.patchscopes.presets.custom import CustomPreset
# isort: on
from attrilens.lm import LM
from attrilens.patchscopes.result import InspectResult

__all__ = [
    "BARE", "GENERIC_DESCRIPTIONS", "GENERIC_RELATIONS", "PLACEHOLDER", "PRESETS", "TOKEN_IDENTITY",
    "AttributeExtractionPreset", "BareTokenIdentityPreset", "CrossModelPreset", "CustomPreset",
    "EntityDescriptionPreset", "GridOptions", "LogitLensPreset", "MultiHopPreset", "Preset", "TokenIdentityPreset",
    "TunedLensPreset", "attribute_extraction", "cross_model", "description_template", "entity_description",
    "fit_cross_model", "layer_correspondence", "logit_lens", "multi_hop", "placeholder_target", "preset_for", "run",
    "run_preset", "token_identity", "tuned_lens",
]


def preset_for(name: str | None, *, target_prompt: str | None = None, target_model: Any = None) -> type[Preset]:
    """The preset class registered as `name` (either spelling); None: `custom` with a target, else `logit-lens`."""
    if not name:
        name = "custom" if target_prompt or target_model is not None else "logit-lens"
    return PRESETS.get(name)


def run(name: str | None, lm: LM, prompt: str | Sequence[int], *, chat_template: bool | None = None,
        option_texts: collections.abc.Mapping[str, str] | None = None, **options: Any) -> InspectResult:
    """Run the preset `name` on `prompt` with the CLI's option names (layer, position, target_model (an LM),
    target_prompt, target_layer, target_position, relation, lens, top_k, max_new_tokens, or any field of the
    preset's `Options`); None means not given. `option_texts`: {name: text} of the preset's options (`--option`,
    the web form), coerced to their types. Name None picks as `preset_for` does. The chat template is off
    unless `chat_template=True` (positions then still index the prompt's own tokens)."""
    target_prompt = options.get("target_prompt") or (option_texts or {}).get("target_prompt")
    preset = preset_for(name, target_prompt=target_prompt, target_model=options.get("target_model"))
    return run_preset(preset, lm, prompt, preset.options_from_text(option_texts, **options),
                      chat_template=bool(chat_template))


def logit_lens(lm: LM, prompt: str | Sequence[int], *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """Final norm + unembedding of every (layer, position) state: S = T, ℓ* = L, f = identity (nostalgebraist 2020)."""
    options = LogitLensPreset.Options(layers=layers, positions=positions, top_k=top_k)
    return run_preset(LogitLensPreset, lm, prompt, options)


def tuned_lens(lm: LM, prompt: str | Sequence[int], lens: TunedLens | str | Path, *, layers: Sequence[int] | None = None,
               positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """The logit lens after each layer's trained affine translator (Belrose et al. 2023)."""
    options = TunedLensPreset.Options(layers=layers, positions=positions, top_k=top_k, lens=lens)
    return run_preset(TunedLensPreset, lm, prompt, options)


def token_identity(lm: LM, prompt: str | Sequence[int], *, bare: bool = False, layers: Sequence[int] | None = None,
                   positions: Sequence[int] | None = None, top_k: int = 5, max_new_tokens: int = 0,
                   target: LM | None = None, mapping: Mapping | Callable | None = None) -> InspectResult:
    """Patch each (ℓ, i) into the last token of the few-shot `cat -> cat ... ?` target (or a bare `?`) at ℓ* = ℓ."""
    preset = BareTokenIdentityPreset if bare else TokenIdentityPreset
    options = preset.Options(layers=layers, positions=positions, top_k=top_k, max_new_tokens=max_new_tokens,
                             target_model=target, mapping=mapping)
    return run_preset(preset, lm, prompt, options)


def attribute_extraction(lm: LM, prompt: str | Sequence[int], relation: str | None = None, *, template: str | None = None,
                         relations: collections.abc.Mapping[str, str] | None = None, layers: Sequence[int] | None = None,
                         position: int = -1, top_k: int = 5, max_new_tokens: int = 6) -> InspectResult:
    """Patch the subject state (ℓ, i) into `The capital of x is` at x (ℓ* = ℓ) and read what follows.

    `relation` names a template in `relations` (default: `GENERIC_RELATIONS`); `template` is any target with an 'x'.
    """
    if (relation is None) == (template is None):
        raise AttrilensError(ONE_TARGET)
    options = AttributeExtractionPreset.Options(relation=relation, target_prompt=template, relations=relations,
                                                layers=layers, position=position, top_k=top_k,
                                                max_new_tokens=max_new_tokens)
    return run_preset(AttributeExtractionPreset, lm, prompt, options)


def entity_description(lm: LM, prompt: str | Sequence[int], *, shots: Sequence[tuple[str, str]] | None = None,
                       layers: Sequence[int] | None = None, position: int = -1, max_new_tokens: int = 16,
                       top_k: int = 5) -> InspectResult:
    """Patch the entity state into the `x` of a few-shot description target (`shots`, default generic) and
    generate the description."""
    options = EntityDescriptionPreset.Options(shots=shots, layers=layers, position=position, top_k=top_k,
                                              max_new_tokens=max_new_tokens)
    return run_preset(EntityDescriptionPreset, lm, prompt, options)


def cross_model(source: LM, target: LM, prompt: str | Sequence[int], *, mapping: LayerMaps | None = None,
                texts: Sequence[str] | None = None, positions: Sequence[int] | None = None, top_k: int = 5) -> InspectResult:
    """Patch the source (proxy) model's states, affinely mapped, into the target model at the same token and depth.

    Without `mapping`, maps are fitted on `texts` (same tokens through both models) for ℓ* = round(ℓ · L*/L).
    """
    options = CrossModelPreset.Options(target_model=target, mapping=mapping, texts=texts, positions=positions, top_k=top_k)
    return run_preset(CrossModelPreset, source, prompt, options)


def multi_hop(lm: LM, hop1_prompt: str | Sequence[int], hop2_template: str, *, layer: int, target_layer: int,
              position: int = -1, top_k: int = 5, max_new_tokens: int = 6) -> InspectResult:
    """Patch the hop-1 answer state (ℓ, i) into the `x` of the hop-2 template at ℓ* and read the hop-2 answer."""
    options = MultiHopPreset.Options(target_prompt=hop2_template, layer=layer, target_layer=target_layer,
                                     position=position, top_k=top_k, max_new_tokens=max_new_tokens)
    return run_preset(MultiHopPreset, lm, hop1_prompt, options)
