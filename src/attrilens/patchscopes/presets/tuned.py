"""The tuned-lens preset (Belrose et al. 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.mappings import TunedLens
from attrilens.patchscopes.presets.base import PRESETS, GridOptions, Preset, lens_grid
from attrilens.patchscopes.result import InspectResult


@PRESETS.register("tuned-lens")
class TunedLensPreset(Preset):
    """The logit lens after each layer's trained affine translator (Belrose et al. 2023)."""

    summary = "the logit lens after each layer's trained translator (needs lens: a TunedLens or its file)"

    @dataclass
    class Options(GridOptions):
        """The grid, and the tuned lens: a `TunedLens` or the safetensors file `TunedLens.save` wrote."""

        lens: TunedLens | str | Path | None = option(None, help="the trained lens (required): a TunedLens, or the "
                                                                "safetensors file TunedLens.save wrote")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.lens is None:
                raise AttrilensError("The tuned-lens preset needs lens (--lens FILE): a lens trained with TunedLens.train.")
            if not isinstance(self.lens, (TunedLens, str, Path)):
                raise AttrilensError(f"lens must be a TunedLens or a file path, not {type(self.lens).__name__}. "
                                     "Pass what TunedLens.train returned or the file it was saved to.")

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """Load and check the lens for `lm`, then read the grid through its translators."""
        lens = options.lens if isinstance(options.lens, TunedLens) else TunedLens.load(options.lens, lm)
        lens.check_model(lm)
        return lens_grid(lm, prompt, self.name, lambda h, layer: lens.translate(h, layer), options.layers,
                         options.positions, options.top_k)
