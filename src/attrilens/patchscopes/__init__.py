"""Lens 3 — Patchscopes: inspect any hidden state by patching it into a target prompt (Ghandeharioun et al. 2024)."""

from attrilens.patchscopes import presets
from attrilens.patchscopes.mappings import (
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
from attrilens.patchscopes.patchscope import Patchscope, Query, sweep
from attrilens.patchscopes.result import Cell, InspectResult

__all__ = [
    "AffineMap", "CallableMapping", "Cell", "Identity", "InspectResult", "LayerMaps", "Mapping", "Patchscope", "Query",
    "TunedLens", "as_mapping", "collect_states", "fit_affine", "fit_layer_maps", "presets", "sweep",
]
