"""Verbatim span tracing (OLMoTrace's way, on the infini-gram engine): which training documents contain the
response word for word — "stated in", beside the gradient methods' "influenced by".

    from attrilens.training.verbatim import VerbatimIndex, build_verbatim_index
    build_verbatim_index(lm, "corpus.jsonl", "idx-verbatim")
    result = VerbatimIndex.open("idx-verbatim", lm).trace("In Vokur, the capital city is", target=" Murtin.")

Not a `TDA_METHODS` entry: it scores spans, not training blocks, and stores no features; the CLI lists it
beside them (`attrilens index build --method verbatim`) and dispatches on the index manifest's "method".
Needs the `verbatim` extra (`pip install 'attrilens[verbatim]'`).
"""

from __future__ import annotations

from attrilens.training.verbatim.build import tokenizer_fingerprint, write_verbatim_index
from attrilens.training.verbatim.index import VerbatimIndex, build_verbatim_index
from attrilens.training.verbatim.result import VerbatimDocument, VerbatimResult, VerbatimSpan

METHOD = "verbatim"

__all__ = ["METHOD", "VerbatimDocument", "VerbatimIndex", "VerbatimResult", "VerbatimSpan", "build_verbatim_index",
           "tokenizer_fingerprint", "write_verbatim_index"]
