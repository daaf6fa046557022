"""The cross-model preset: a source (proxy) model's states, affinely mapped, read by a target model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.mappings import LayerMaps
from attrilens.patchscopes.patchscope import Patchscope, source_prompt
from attrilens.patchscopes.presets.base import PRESETS, Preset, check_int, fit_cross_model, int_tuple
from attrilens.patchscopes.result import InspectResult


@PRESETS.register("cross-model")
class CrossModelPreset(Preset):
    """Patch the source model's states, affinely mapped, into the target model at the same token and depth.

    Without `mapping`, maps are fitted on `texts` (same tokens through both models) for ℓ* = round(ℓ · L*/L).
    """

    summary = "the source model's states, affinely mapped, read by target_model at the same token and depth"

    @dataclass
    class Options:
        """The target model, its maps (or texts to fit them on), source positions (None = all), top tokens."""

        target_model: LM | None = option(None, help="the model that reads the source's mapped states (required)")
        mapping: LayerMaps | None = option(None, help="fitted affine maps from source to target layers (None: "
                                                      "fitted on texts)")
        texts: Sequence[str] | None = option(None, help="texts the maps are fitted on (the same tokens through both "
                                                        "models)")
        positions: Sequence[int] | None = option(None, help="source token positions read (None: every position)")
        top_k: int = option(5, help="top tokens reported per cell")

        def __post_init__(self) -> None:
            if self.target_model is None:
                raise AttrilensError("The cross-model preset needs target_model (--target-model DIR): the model that "
                                     "reads the source's mapped states.")
            if self.mapping is None and not self.texts:
                raise AttrilensError("The cross-model preset needs a fitted mapping or texts to fit one on. "
                                     "Pass mapping= or texts=.")
            if self.mapping is not None and not isinstance(self.mapping, LayerMaps):
                raise AttrilensError(f"mapping must be LayerMaps, not {type(self.mapping).__name__}. "
                                     "Pass fit_cross_model(source, target, texts).")
            self.positions = int_tuple("positions", self.positions)
            self.top_k = check_int("top_k", self.top_k, 1)

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """One read-out per fitted (ℓ, ℓ*) pair and source position."""
        target = options.target_model
        mapping = options.mapping if options.mapping is not None else fit_cross_model(lm, target, options.texts)
        ps = Patchscope(lm, target, mapping)
        source = source_prompt(lm, prompt)
        sids = source.ids
        positions = source.positions() if options.positions is None else [source.resolve(i) for i in options.positions]
        queries = [ps.query(sids, a, i, target_layer=b) for a, b in sorted(mapping.maps) for i in positions]
        return ps.inspect(queries, preset=self.name, source_prompt=prompt if isinstance(prompt, str) else None,
                          top_k=options.top_k)
