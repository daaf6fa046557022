"""The logit-lens preset (nostalgebraist 2020)."""

from __future__ import annotations

from collections.abc import Sequence

from attrilens.lm import LM
from attrilens.patchscopes.presets.base import PRESETS, GridOptions, Preset, lens_grid
from attrilens.patchscopes.result import InspectResult


@PRESETS.register("logit-lens")
class LogitLensPreset(Preset):
    """Final norm + unembedding of every (layer, position) state: S = T, ℓ* = L, f = identity (one forward)."""

    summary = "final norm + unembedding of every (layer, position) state (one forward)"
    Options = GridOptions

    def run(self, lm: LM, prompt: str | Sequence[int], options: GridOptions) -> InspectResult:
        """The logit-lens grid of the chosen layers × positions."""
        return lens_grid(lm, prompt, self.name, lambda h, layer: h, options.layers, options.positions, options.top_k)
