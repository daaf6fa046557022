"""The entity-description preset: patch an entity's state into the `x` of few-shot `entity: description` lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.patchscope import Patchscope
from attrilens.patchscopes.presets.base import (
    PLACEHOLDER,
    PRESETS,
    Preset,
    check_int,
    int_tuple,
    placeholder_queries,
)
from attrilens.patchscopes.result import InspectResult

GENERIC_DESCRIPTIONS = (
    ("Paris", "the capital city of France."),
    ("cat", "a small animal that people keep as a pet."),
    ("Mozart", "a composer who wrote many symphonies."),
)


def description_template(shots: Sequence[tuple[str, str]] | None = None) -> str:
    """Few-shot `entity: description` lines ending in `x:` (default: generic shots; a fact world passes its own)."""
    return "".join(f"{e}: {d}\n" for e, d in (GENERIC_DESCRIPTIONS if shots is None else shots)) + f"{PLACEHOLDER}:"


@PRESETS.register("entity-description")
class EntityDescriptionPreset(Preset):
    """Patch the entity state into the `x` of a few-shot description target and generate the description."""

    summary = "patch an entity's state into the 'x' of few-shot 'entity: description' lines and generate"

    @dataclass
    class Options:
        """The few-shot (entity, description) pairs, layers, the entity's position, top tokens, generated tokens."""

        shots: Sequence[tuple[str, str]] | None = option(None, help="few-shot (entity, description) pairs of the "
                                                                    "target (None: generic ones)")
        layers: Sequence[int] | None = option(None, help="source layers, one patched read-out each (None: every layer)")
        position: int = option(-1, help="the entity's token position in the source prompt (-1: its last token)")
        top_k: int = option(5, help="top tokens reported per cell")
        max_new_tokens: int = option(16, help="tokens of description generated from the patched 'x'")

        def __post_init__(self) -> None:
            shots = GENERIC_DESCRIPTIONS if self.shots is None else self.shots
            if isinstance(shots, (str, bytes)) or not all(
                    isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(x, str) and x for x in s) for s in shots):
                raise AttrilensError("shots must be (entity, description) pairs of non-empty text. "
                                     "Pass e.g. [('Paris', 'the capital city of France.')].")
            self.shots = tuple((e, d) for e, d in shots)
            self.layers = int_tuple("layers", self.layers)
            self.position = check_int("position", self.position)
            self.top_k = check_int("top_k", self.top_k, 1)
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 0)

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """One patched description per layer, from the entity's position into the 'x'."""
        template = description_template(options.shots)
        ps = Patchscope(lm)
        queries = placeholder_queries(ps, prompt, template, options.layers, options.position, None)
        return ps.inspect(queries, preset=self.name, source_prompt=prompt if isinstance(prompt, str) else None,
                          target_prompt=template, top_k=options.top_k, max_new_tokens=options.max_new_tokens)
