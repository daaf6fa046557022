"""The custom preset: any target prompt, layers and positions (the target defaults to the source prompt itself)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import option
from attrilens.patchscopes.patchscope import Patchscope, sweep
from attrilens.patchscopes.presets.base import (
    PRESETS,
    GridOptions,
    Preset,
    check_int,
    fit_cross_model,
    int_tuple,
)
from attrilens.patchscopes.result import InspectResult


@PRESETS.register("custom")
class CustomPreset(Preset):
    """Patch every chosen (ℓ, i) into `target_prompt` at `target_position` and layer ℓ* (default ℓ* = ℓ).

    A target model of another width reads affine maps fitted on `texts`, over the fitted (ℓ, ℓ*) layers.
    """

    summary = "any target_prompt / target_model, layers, positions and target layers"

    @dataclass
    class Options(GridOptions):
        """The grid; the target prompt, model, layers and position; texts to fit maps into a wider or narrower
        target; generated tokens per cell."""

        target_prompt: str | None = option(None, help="the target prompt patched into (None: the source prompt "
                                                      "itself)")
        target_model: LM | None = option(None, help="the target model (None: the source model; another width "
                                                    "needs texts)")
        texts: Sequence[str] | None = option(None, help="texts to fit affine maps on when target_model's width "
                                                        "differs")
        target_layers: Sequence[int] | None = option(None, help="target layers ℓ* (None: ℓ* = ℓ)")
        target_position: int = option(-1, help="the target position patched (-1: the target's last token)")
        max_new_tokens: int = option(0, help="tokens generated from each patched target (0: the next-token read-out "
                                             "only)")

        def __post_init__(self) -> None:
            super().__post_init__()
            self.target_layers = int_tuple("target_layers", self.target_layers)
            self.target_position = check_int("target_position", self.target_position)
            self.max_new_tokens = check_int("max_new_tokens", self.max_new_tokens, 0)

    def run(self, lm: LM, prompt: str | Sequence[int], options: Options) -> InspectResult:
        """A layer × position sweep (same width) or a layer × target-layer sweep through fitted maps."""
        target = lm if options.target_model is None else options.target_model
        common = {"target_position": options.target_position, "top_k": options.top_k,
                  "max_new_tokens": options.max_new_tokens, "preset": self.name}
        if target.d_model == lm.d_model:
            ps = Patchscope(lm, target)
            return sweep(ps, prompt, options.target_prompt, layers=options.layers, positions=options.positions,
                         target_layers=options.target_layers, **common)
        if not options.texts:
            raise AttrilensError(f"The target model's width {target.d_model} differs from the source's {lm.d_model}. "
                                 "Pass texts= to fit affine maps on (the CLI uses the --world corpus).")
        mapping = fit_cross_model(lm, target, options.texts)
        pairs = sorted(mapping.maps)
        return sweep(Patchscope(lm, target, mapping), prompt, options.target_prompt, over="layer_layer",
                     layers=[a for a, _ in pairs] if options.layers is None else options.layers,
                     positions=options.positions,
                     target_layers=[b for _, b in pairs] if options.target_layers is None else options.target_layers, **common)
