"""attrilens: why did the language model say that? Three lenses over any causal LM."""

from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch

__version__ = "0.1.0"
__all__ = ["LM", "AttrilensError", "Patch", "__version__"]
