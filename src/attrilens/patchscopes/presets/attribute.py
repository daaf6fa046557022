"""The attribute-extraction preset: patch a subject's state into `The capital of x is` and read what follows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.patchscope import Patchscope
from attrilens.patchscopes.presets.base import (
    PRESETS,
    Preset,
    check_int,
    check_placeholder,
    int_tuple,
    placeholder_queries,
)
from attrilens.patchscopes.result import InspectResult

# Generic English relation targets; a fact world passes its own table as `relations`.
GENERIC_RELATIONS: dict[str, str] = {
    "capital": "The capital of x is",
    "currency": "The currency of x is the",
    "language": "The language of x is",
    "continent": "The continent of x is",
    "founder": "The founder of x was",
}
DEFAULT_RELATION = "capital"
ONE_TARGET = ("Pass exactly one of relation (a name in relations) or template (a target with an 'x'; "
              "target_prompt / --target-prompt).")


@PRESETS.register("attribute-extraction")
class AttributeExtractionPreset(Preset):
    """Patch the subject state (ℓ, i) into `The capital of x is` at x (ℓ* = ℓ) and read what follows."""

    summary = "patch the subject's state into the 'x' of a relation target ('The capital of x is') and read on"

    @dataclass
    class Options:
        """The target (a relation name looked up in `relations`, or a template with an 'x'), layers, the subject's
        position, top tokens and generated tokens per cell. Neither relation nor template: relation 'capital'."""

        relation: str | None = option(None, help="a relation named in relations, whose template is the target "
                                                 "(neither it nor target_prompt: capital)")
        target_prompt: str | None = option(None, help="a target template with a standalone 'x', instead of a "
                                                      "relation")
        relations: Mapping[str, str] | None = option(None, help="relation name → template (None: generic English "
                                                                "ones; a fact world passes its own)")
        layers: Sequence[int] | None = option(None, help="source layers, one patched read-out each (None: every layer)")
        position: int = option(-1, help="the subject's token position in the source prompt (-1: its last token)")
        top_k: int = option(5, help="top tokens reported per cell")
        max_new_tokens: int = option(6, help="tokens generated after the patched 'x': the attribute read out")

        def __post_init__(self) -> None:
            if self.relation is not None and self.target_prompt is not None:
                raise AttrilensError(ONE_TARGET)
            self.relations = dict(GENERIC_RELATIONS if self.relations is None else self.relations)
            if self.target_prompt is None:
                self.relation = DEFAULT_RELATION if self.relation is None else self.relation
                if self.relation not in self.relations:
                    raise AttrilensError(f"Unknown relation {self.relation!r}. Choose one of "
                                         f"{', '.join(sorted(self.relations))}, or pass a template with an 'x'.")
            check_placeholder(self.template)
            self.layers = int_tuple("layers", self.layers)
            self.position = check_int("position", self.position)
            self.top_k = check_int("top_k", self.top_k, 1)
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 0)

        @property
        def template(self) -> str:
            """The target prompt: the given template, else the relation's."""
            return self.target_prompt if self.target_prompt is not None else self.relations[self.relation]

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """One patched read-out (and generation) per layer, from the subject's position into the 'x'."""
        ps = Patchscope(lm)
        queries = placeholder_queries(ps, prompt, options.template, options.layers, options.position, None)
        return ps.inspect(queries, preset=self.name, source_prompt=prompt if isinstance(prompt, str) else None,
                          target_prompt=options.template, top_k=options.top_k, max_new_tokens=options.max_new_tokens)
