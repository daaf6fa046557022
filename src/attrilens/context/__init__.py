"""Lens 1 — context attribution: exact leave-one-out made fast (cached, hierarchical, proxy) and baselines."""

from attrilens.context.attributor import METHODS, ContextAttributor, parse_method
from attrilens.context.result import ContextResult, SourceScore

__all__ = ["METHODS", "ContextAttributor", "ContextResult", "SourceScore", "parse_method"]
