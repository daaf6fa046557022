"""attrilens: why did the language model say that? Three lenses over any causal LM."""

from attrilens.errors import AttrilensError

__version__ = "0.1.0"
__all__ = ["AttrilensError", "__version__"]
