"""The lenses behind the views: `LensBackend` answers the requests of `attrilens.view.requests` with the three
lenses' Python APIs, on the model (and indexes) the app was started with; `check_request` checks a request's
method and preset names, and its method options (names and types, through `attrilens.options`), against the
lenses' registries before any work (the web app runs it for every backend).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from attrilens.context import ContextAttributor, parse_method
from attrilens.context.pipeline import option_values
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import parse_texts
from attrilens.patchscopes import presets
from attrilens.training import TrainingIndex
from attrilens.training.verbatim import VerbatimIndex
from attrilens.view.requests import (
    ContextRequest,
    InspectRequest,
    NeighborsRequest,
    TraceRequest,
    VerbatimRequest,
)


def check_request(kind: str, req: Any) -> None:
    """Refuse a context method or a preset the registries do not know, naming the ones they do, and options the
    method or preset does not take (or of the wrong type), naming the ones it does."""
    if kind == "context" and (req.method is not None or req.options):
        try:
            spec = parse_method(req.method or "cached")
        except AttrilensError as exc:
            raise AttrilensError(f"Bad context request: method: {exc}") from None
        try:
            option_values(spec, req.option_texts())
        except AttrilensError as exc:
            raise AttrilensError(f"Bad context request: options: {exc}") from None
    if kind == "inspect" and req.preset is not None and req.preset not in presets.PRESETS:
        raise AttrilensError(f"Bad inspect request: preset: unknown preset {req.preset!r}; choose one of "
                             f"{', '.join(presets.PRESETS.names())}.")
    if kind == "inspect" and req.options:
        texts = req.option_texts()
        cls = presets.preset_for(req.preset, target_prompt=req.target_prompt or texts.get("target_prompt"))
        try:
            parse_texts(cls.Options, texts, cls.option_owner())
        except AttrilensError as exc:
            raise AttrilensError(f"Bad inspect request: options: {exc}") from None


class LensBackend:
    """Answers view requests with the lenses, on the model (and index) the server was started with; one at a time."""

    def __init__(self, model_dir: Path | str | None, index_dir: Path | str | None = None, *, lm: Any = None,
                 verbatim_dir: Path | str | None = None):
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.verbatim_dir = Path(verbatim_dir) if verbatim_dir is not None else None
        self._lock = threading.RLock()
        self._lm = lm  # an already loaded LM (notebooks) instead of loading model_dir
        self._training_index = None
        self._verbatim_index = None
        self._context_cache: OrderedDict[tuple, Any] = OrderedDict()

    def check(self, kind: str, req: Any) -> None:
        """`check_request`: the names a request gives, against the lenses' registries."""
        check_request(kind, req)

    def answers(self, kind: str) -> bool:
        """Whether this backend can answer `kind` requests: verbatim spans need a verbatim index."""
        return kind != "verbatim" or self.verbatim_dir is not None

    def lm(self):
        """The model, loaded once on first use."""
        with self._lock:
            if self._lm is None:
                if self.model_dir is None:
                    raise AttrilensError("No model: start the server with --model DIR to compute new results.")
                self._lm = LM.from_pretrained(self.model_dir)
            return self._lm

    def context(self, req: ContextRequest) -> dict[str, Any]:
        """Context attribution of the (given or generated) response; a span re-scores the cached full result."""
        method = req.method or "cached"
        options = option_values(parse_method(method), req.option_texts())
        with self._lock:
            key = (req.context, req.query, req.response, method, repr(sorted(options.items())))
            result = self._context_cache.get(key)
            if result is None:
                result = ContextAttributor(self.lm(), method=method, **options).attribute(req.context, req.query,
                                                                                          req.response)
                for k in (key, (req.context, req.query, result.response, method, key[-1])):
                    self._context_cache[k] = result
                while len(self._context_cache) > 16:
                    self._context_cache.popitem(last=False)
            if req.span is not None:
                result = result.for_response_span(*req.span)
            return result.to_dict()

    def inspect(self, req: InspectRequest) -> dict[str, Any]:
        """A Patchscope run (the same document as `attrilens inspect --json`)."""
        with self._lock:
            return presets.run(req.preset, self.lm(), req.prompt, layer=req.layer, position=req.position,
                               target_prompt=req.target_prompt, option_texts=req.option_texts()).to_dict()

    def _index(self):
        if self.index_dir is None:
            raise AttrilensError("No training-data index: start the server with --index IDX to trace selections.")
        if self._training_index is None:
            self._training_index = TrainingIndex.open(self.index_dir, self.lm())
        return self._training_index

    def trace(self, req: TraceRequest) -> dict[str, Any]:
        """Training examples for the prompt's target (or generation), restricted to the selected character span."""
        with self._lock:
            result = self._index().trace(req.prompt, target=req.target, generate=req.target is None, top_k=req.top_k,
                                         span=req.span)
            return result.to_dict()

    def neighbors(self, req: NeighborsRequest) -> dict[str, Any]:
        """The texts of the blocks around a training example, from the index's stored corpus."""
        with self._lock:
            corpus = self._index().corpus
            rows = [i for i, (d, b) in enumerate(zip(corpus.docs, corpus.blocks, strict=True))
                    if d == req.id and (req.block is None or int(b) == req.block)]
            if not rows:
                raise AttrilensError(f"No training example {req.id!r} block {req.block} in the index. Pass an id it returned.")
            return {"id": req.id, "block": req.block, "neighbours": corpus.neighbours(rows[0])}

    def verbatim(self, req: VerbatimRequest) -> dict[str, Any]:
        """The response's spans found verbatim in the training corpus, each with the documents containing it."""
        with self._lock:
            if self.verbatim_dir is None:
                raise AttrilensError("No verbatim index: start the app with --verbatim-index DIR (from `attrilens "
                                     "index build --method verbatim`) to find verbatim spans.")
            if self._verbatim_index is None:
                self._verbatim_index = VerbatimIndex.open(self.verbatim_dir, self.lm())
            options = {"min_len": req.min_len} if req.min_len is not None else {}
            result = self._verbatim_index.trace(req.prompt, target=req.target, generate=req.target is None,
                                                top_k=req.top_k, **options)
            return result.to_dict()
