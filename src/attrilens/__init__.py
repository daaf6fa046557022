"""attrilens: why did the language model say that? Three lenses over any causal LM."""

import attrilens.view  # noqa: F401  (registers the front end results draw with: to_html, show)
from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch

__version__ = "0.1.0"
__all__ = ["LM", "AttrilensError", "Patch", "__version__", "methods"]


def methods(lens: str | None = None) -> list[dict]:
    """Every registered method (of `lens`: context, training or patchscopes; default all) with its one-line summary
    and options (name, type, default, help, choices): what `attrilens methods` prints; `pandas.DataFrame(...)`
    makes a table of it."""
    from attrilens.app.methods import methods as rows

    return rows(lens)
