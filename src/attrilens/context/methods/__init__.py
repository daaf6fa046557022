"""The context lens's estimators, by name: `CONTEXT_METHODS`. Adding one is one file with a registered class."""

from attrilens.context.methods import attention, contextcite, gradient, loo  # noqa: F401  (they register)
from attrilens.context.methods.base import CONTEXT_METHODS, ContextMethod, Estimate

__all__ = ["CONTEXT_METHODS", "ContextMethod", "Estimate"]
