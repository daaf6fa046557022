"""attrilens: why did the language model say that? Three lenses over any causal LM."""

import attrilens.view  # noqa: F401  (registers the front end results draw with: to_html, show)
from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch

__version__ = "0.1.0"
__all__ = ["LM", "AttrilensError", "Patch", "__version__"]
