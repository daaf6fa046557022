"""The token-identity presets: few-shot `cat -> cat ... ?` target, and the bare `?` variant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.mappings import Mapping
from attrilens.patchscopes.patchscope import Patchscope, sweep
from attrilens.patchscopes.presets.base import PRESETS, GridOptions, Preset, check_int
from attrilens.patchscopes.result import InspectResult

TOKEN_IDENTITY = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
BARE = "?"


@PRESETS.register("token-identity")
class TokenIdentityPreset(Preset):
    """Patch each (ℓ, i) into the last token of the few-shot `cat -> cat ... ?` target at ℓ* = ℓ."""

    summary = "patch each (layer, position) into the '?' of a few-shot 'cat -> cat' target"
    target_prompt: ClassVar[str] = TOKEN_IDENTITY

    @dataclass
    class Options(GridOptions):
        """The grid; generated tokens per cell; optionally another target model and the map into it."""

        max_new_tokens: int = option(0, help="tokens generated from each patched target (0: the next-token "
                                             "read-out only)")
        target_model: LM | None = option(None, help="another model reading the patched states (None: the source "
                                                    "model itself)")
        mapping: Mapping | Callable | None = option(None, help="the map of source states into target_model's space "
                                                               "(None: identity; needed across widths)")

        def __post_init__(self) -> None:
            super().__post_init__()
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 0)

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """One patched read-out (and generation) per (layer, position), the target layer equal to the source's."""
        ps = Patchscope(lm, options.target_model, options.mapping)
        return sweep(ps, prompt, self.target_prompt, layers=options.layers, positions=options.positions,
                     top_k=options.top_k, max_new_tokens=options.max_new_tokens, preset=self.name)


@PRESETS.register("token-identity-bare")
class BareTokenIdentityPreset(TokenIdentityPreset):
    """Token identity through a bare `?` target (no few-shot examples)."""

    summary = "token identity through a bare '?' target"
    target_prompt = BARE
