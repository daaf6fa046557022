"""The offline demo, above the three lenses: the synthetic fact world, the tiny-model and LoRA trainers, the
shipped demo models and index, and `run_demo`, which explains one generation through every lens."""

from __future__ import annotations

from attrilens.demo.report import run_demo

__all__ = ["run_demo"]
