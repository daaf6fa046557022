"""Lens 1 — context attribution: exact leave-one-out made fast (cached, hierarchical, proxy) and baselines.

Estimators live in `CONTEXT_METHODS`, wrappers (naive, cached, hierarchical, proxy, proxy-pruning) in
`CONTEXT_WRAPPERS`; adding a method is one file with a class registered in one of them.
"""

from attrilens.context.attributor import ContextAttributor
from attrilens.context.methods import CONTEXT_METHODS, ContextMethod, Estimate
from attrilens.context.options import NoOptions
from attrilens.context.result import ContextResult, SourceScore
from attrilens.context.run import AttributionRun
from attrilens.context.spec import MethodSpec, method_names, parse_method
from attrilens.context.wrappers import CONTEXT_WRAPPERS, ContextWrapper, DropsWrapper, ScorerWrapper

__all__ = ["CONTEXT_METHODS", "CONTEXT_WRAPPERS", "AttributionRun", "ContextAttributor", "ContextMethod",
           "ContextResult", "ContextWrapper", "DropsWrapper", "Estimate", "MethodSpec", "NoOptions",
           "ScorerWrapper", "SourceScore", "method_names", "parse_method"]
