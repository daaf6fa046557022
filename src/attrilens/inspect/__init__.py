"""Lens 3 — Patchscopes: inspect any hidden state by patching it into a target prompt (Ghandeharioun et al. 2024)."""

from attrilens.inspect import presets
from attrilens.inspect.lenses import (
    AffineMap,
    CallableMapping,
    Identity,
    LayerMaps,
    Mapping,
    TunedLens,
    as_mapping,
    collect_states,
    fit_affine,
    fit_layer_maps,
)
from attrilens.inspect.patchscope import Patchscope, Query, sweep
from attrilens.inspect.result import Cell, InspectResult

__all__ = [
    "AffineMap", "CallableMapping", "Cell", "Identity", "InspectResult", "LayerMaps", "Mapping", "Patchscope", "Query",
    "TunedLens", "as_mapping", "collect_states", "fit_affine", "fit_layer_maps", "presets", "sweep",
]
