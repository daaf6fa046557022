"""The multi-hop preset: patch the hop-1 answer state into the `x` of a hop-2 template."""

from __future__ import annotations

from collections.abc import Sequence
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
    placeholder_queries,
)
from attrilens.patchscopes.result import InspectResult


@PRESETS.register("multi-hop")
class MultiHopPreset(Preset):
    """Patch the hop-1 answer state (ℓ, i) into the `x` of the hop-2 template at ℓ* and read the hop-2 answer."""

    summary = "patch the hop-1 answer state (layer) into the 'x' of a hop-2 target_prompt at target_layer"

    @dataclass
    class Options:
        """The hop-2 template (with an 'x'), the source layer ℓ and target layer ℓ*, the source position, top tokens
        and generated tokens."""

        target_prompt: str | None = option(None, help="the hop-2 template with a standalone 'x' (required)")
        layer: int | None = option(None, help="source layer ℓ of the hop-1 answer state (required)")
        target_layer: int | None = option(None, help="target layer ℓ* it is patched into (required)")
        position: int = option(-1, help="the source token position read (negative counts from the end; -1: the last token)")
        top_k: int = option(5, help="top tokens reported per cell")
        max_new_tokens: int = option(6, help="tokens generated after the patched 'x': the hop-2 answer")

        def __post_init__(self) -> None:
            if self.target_prompt is None or self.layer is None or self.target_layer is None:
                raise AttrilensError("The multi-hop preset needs target_prompt (a hop-2 template with an 'x'), layer and "
                                     "target_layer (--target-prompt, --layer, --target-layer).")
            check_placeholder(self.target_prompt)
            self.layer = check_int("layer", self.layer)
            self.target_layer = check_int("target_layer", self.target_layer)
            self.position = check_int("position", self.position)
            self.top_k = check_int("top_k", self.top_k, 1)
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 0)

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """One cell: (ℓ, position) of the hop-1 prompt into the hop-2 template's 'x' at ℓ*."""
        ps = Patchscope(lm)
        queries = placeholder_queries(ps, prompt, options.target_prompt, [options.layer], options.position,
                                      [options.target_layer])
        return ps.inspect(queries, preset=self.name, source_prompt=prompt if isinstance(prompt, str) else None,
                          target_prompt=options.target_prompt, top_k=options.top_k, max_new_tokens=options.max_new_tokens)
