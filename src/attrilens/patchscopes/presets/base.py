"""What a Patchscope preset is — a class registered by name with its own `Options` dataclass and a `run` — and the
helpers the presets share: option checks, the one-forward lens grid, placeholder targets, cross-model maps.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import HasOptions, NoOptions, build_options, option
from attrilens.patchscopes.mappings import LayerMaps, fit_layer_maps, token_rows
from attrilens.patchscopes.patchscope import (
    Patchscope,
    Query,
    placeholder_position,
    source_prompt,
    top_tokens,
)
from attrilens.patchscopes.result import Cell, InspectResult
from attrilens.registry import Registry
from attrilens.results import Cost, Timer

PLACEHOLDER = "x"
# A CLI option naming one layer or position fills a preset's list option (`layer=3` is `layers=[3]`).
LIST_OPTIONS = {"layer": "layers", "position": "positions", "target_layer": "target_layers"}


class Preset(HasOptions):
    """A ready-made Patchscope configuration: `Options` (a dataclass checked on construction) and `run`.

    Register a subclass with ``@PRESETS.register("my-name")``; `presets.run("my-name", lm, prompt, **options)`,
    the CLI's `--preset` and the web app then find it by name.
    """

    name: ClassVar[str] = ""  # set by PRESETS.register
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    option_kind = "preset"

    def run(self, lm: LM, prompt: str | Sequence[int], options: Any) -> InspectResult:
        """Inspect the hidden states of `prompt` (text or token ids) with `options` (an instance of `Options`)."""
        raise NotImplementedError

    @classmethod
    def options(cls, **given: Any) -> Any:
        """`Options` from CLI-named values: None means not given, and `layer=3` fills a `layers` option as [3]."""
        return cls.options_from_text(None, **given)

    @classmethod
    def options_from_text(cls, texts: Mapping[str, str] | None, **given: Any) -> Any:
        """`Options` from CLI-named values (as `options`) and {name: text} (`--option`, the web form)."""
        names = cls.option_names()
        kwargs: dict[str, Any] = {}
        for key, value in given.items():
            if value is None:
                continue
            if key not in names and LIST_OPTIONS.get(key) in names:
                key, value = LIST_OPTIONS[key], [value]
            kwargs[key] = value
        return build_options(cls.Options, kwargs, owner=cls.option_owner(), texts=texts)


PRESETS: Registry[type[Preset]] = Registry("preset")


def run_preset(preset: type[Preset], lm: LM, prompt: str | Sequence[int], options: Any, *,
               chat_template: bool = False) -> InspectResult:
    """Run a preset class with built options; the result records the preset's registered (hyphenated) name.

    Prompts are read without the chat template unless `chat_template`: a Patchscope inspects the text given,
    and with the template the user's positions are still counted inside the user's text."""
    result = preset().run(lm.with_chat_template(chat_template), prompt, options)
    result.preset = preset.name
    return result


# ---------------------------------------------------------------------------------------------- option checks
def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int (at least `minimum` when given); anything else names the option and the fix."""
    try:
        number = operator.index(value)
    except TypeError:
        raise AttrilensError(f"{name} must be an integer, got {value!r}. Pass a whole number "
                             f"(--{name.replace('_', '-')}).") from None
    if minimum is not None and number < minimum:
        raise AttrilensError(f"{name} must be at least {minimum}, got {number}. "
                             f"Pass {name} >= {minimum} (--{name.replace('_', '-')}).")
    return number


def int_tuple(name: str, values: Iterable[int] | None) -> tuple[int, ...] | None:
    """A layers/positions option as a tuple of ints (None = all); an empty list or a non-integer is an error."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise AttrilensError(f"{name} must be a list of integers, got {values!r}. Pass e.g. [0, 2], or None for all.")
    out = tuple(check_int(name, v) for v in values)
    if not out:
        raise AttrilensError(f"{name} is empty. Pass at least one, or None for all.")
    return out


def check_placeholder(template: str, placeholder: str = PLACEHOLDER) -> re.Match:
    """The last standalone `placeholder` word of a target template (the word the state is patched into)."""
    if not isinstance(template, str):
        raise AttrilensError(f"A target template must be text, got {type(template).__name__}. Pass a string with an {placeholder!r}.")
    hits = list(re.finditer(rf"(?<!\w){re.escape(placeholder)}(?!\w)", template))
    if not hits:
        raise AttrilensError(f"The target template {template!r} has no standalone {placeholder!r}. Mark the patched word with it.")
    return hits[-1]


@dataclass
class GridOptions:
    """Which source cells to read (None = every layer / every position) and how many top tokens per cell."""

    layers: Sequence[int] | None = option(None, help="source layers read (0 = embeddings, L = the last block; None: "
                                                     "every layer)")
    positions: Sequence[int] | None = option(None, help="source token positions read (negative counts from the end; "
                                                        "None: every position)")
    top_k: int = option(5, help="top tokens reported per (layer, position) cell")

    def __post_init__(self) -> None:
        self.layers = int_tuple("layers", self.layers)
        self.positions = int_tuple("positions", self.positions)
        self.top_k = check_int("top_k", self.top_k, 1)


# ---------------------------------------------------------------------------------------------- shared helpers
def lens_grid(lm: LM, prompt: str | Sequence[int], preset: str, translate: Callable[[torch.Tensor, int], torch.Tensor],
              layers: Sequence[int] | None, positions: Sequence[int] | None, top_k: int) -> InspectResult:
    """Read every (layer, position) state through `translate` and the final norm + unembedding (one forward)."""
    cost = Cost()
    with Timer(cost):
        source = source_prompt(lm, prompt)
        ids = list(source.ids)
        layers = list(range(lm.n_layers + 1)) if layers is None else [lm.check_layer(x) for x in layers]
        positions = source.positions() if positions is None else [source.resolve(i) for i in positions]
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


def placeholder_target(lm: LM, template: str, placeholder: str = PLACEHOLDER) -> tuple[list[int], int]:
    """Target ids of a template and the position of its placeholder word (its last token)."""
    m = check_placeholder(template, placeholder)
    return placeholder_position(lm, template, m.start(), m.end())


def placeholder_queries(ps: Patchscope, prompt: str | Sequence[int], template: str, layers: Sequence[int] | None,
                        position: int, target_layers: Sequence[int] | None) -> list[Query]:
    """Queries patching the source state (ℓ, position) into the template's placeholder at ℓ* (default ℓ* = ℓ)."""
    tids, tpos = placeholder_target(ps.target, template)
    source = source_prompt(ps.source, prompt)
    sids, position = source.ids, source.resolve(position)
    layers = list(range(ps.source.n_layers + 1)) if layers is None else list(layers)
    return [ps.query(sids, ell, position, target_prompt=tids, target_layer=ell if target_layers is None else t,
                     target_position=tpos) for ell in layers for t in (target_layers or [None])]


def layer_correspondence(source: LM, target: LM) -> list[tuple[int, int]]:
    """(ℓ, ℓ*) pairs at the same relative depth: ℓ* = round(ℓ · L*/L)."""
    return [(ell, round(ell * target.n_layers / source.n_layers)) for ell in range(source.n_layers + 1)]


def fit_cross_model(source: LM, target: LM, texts: Sequence[str], *, pairs: Sequence[tuple[int, int]] | None = None,
                    max_tokens: int = 128) -> LayerMaps:
    """Least-squares affine maps from source layers to target layers on the same tokens of `texts`."""
    rows = token_rows(source, texts, max_tokens=max_tokens)
    return fit_layer_maps(source, rows, pairs or layer_correspondence(source, target), target=target)
