"""What the interactive views ask of Python, validated: trace a token span, attribute a context, inspect, compare,
find a response's verbatim spans in the training corpus.

The web app and the widget both route requests through `dispatch(backend, kind, payload)`. `LensBackend` answers
them with the three lenses' Python APIs; bad input is an `AttrilensError` (HTTP 400). Answers are the lenses' own
`to_dict()` documents. Method and preset names are checked against the lenses' registries.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from attrilens.context import ContextAttributor, parse_method
from attrilens.errors import AttrilensError
from attrilens.inspect import presets
from attrilens.lm import LM
from attrilens.training import TrainingIndex
from attrilens.training.verbatim import VerbatimIndex

MAX_TEXT = 100_000  # characters per text field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_span(span: tuple[int, int] | None) -> tuple[int, int] | None:
    if span is not None and not (0 <= span[0] < span[1]):
        raise ValueError(f"span {list(span)} must satisfy 0 <= start < end (character offsets)")
    return span


class TraceRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    target: str | None = Field(default=None, max_length=MAX_TEXT)
    span: tuple[int, int] | None = None
    top_k: int = Field(default=10, ge=1, le=100)
    _span = field_validator("span")(_check_span)


class ContextRequest(_Request):
    context: str = Field(min_length=1, max_length=MAX_TEXT)
    query: str = Field(min_length=1, max_length=MAX_TEXT)
    response: str | None = Field(default=None, max_length=MAX_TEXT)
    span: tuple[int, int] | None = None
    method: str | None = Field(default=None, max_length=80)
    _span = field_validator("span")(_check_span)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str | None) -> str | None:
        if method is not None:
            try:
                parse_method(method)
            except AttrilensError as exc:
                raise ValueError(str(exc)) from None
        return method


class InspectRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    preset: str | None = Field(default=None, max_length=40)
    layer: int | None = None
    position: int | None = None
    target_prompt: str | None = Field(default=None, max_length=MAX_TEXT)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in presets.PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets.PRESETS.names())}")
        return preset


class CompareRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    model_text: str | None = Field(default=None, max_length=MAX_TEXT)
    user_text: str = Field(min_length=1, max_length=MAX_TEXT)
    top_k: int = Field(default=10, ge=1, le=100)


class NeighborsRequest(_Request):
    id: str = Field(min_length=1, max_length=200)
    block: int | None = None


class VerbatimRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    target: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)  # None: the model generates
    min_len: int | None = Field(default=None, ge=1, le=1000)  # tokens; None: the index's default
    top_k: int = Field(default=10, ge=1, le=100)  # documents per span


REQUESTS: dict[str, type[_Request]] = {
    "trace": TraceRequest, "context": ContextRequest, "inspect": InspectRequest,
    "compare": CompareRequest, "neighbors": NeighborsRequest, "verbatim": VerbatimRequest,
}


class Backend(Protocol):
    """Computes the documents the views ask for (the lenses in the product; a test double in tests).

    Optional: `verbatim(req: VerbatimRequest)`, and `answers(kind) -> bool` saying which kinds it can answer now."""

    def trace(self, req: TraceRequest) -> dict[str, Any]: ...
    def context(self, req: ContextRequest) -> dict[str, Any]: ...
    def inspect(self, req: InspectRequest) -> dict[str, Any]: ...
    def neighbors(self, req: NeighborsRequest) -> dict[str, Any]: ...


def can_answer(backend: Backend, kind: str) -> bool:
    """Whether `backend` answers `kind` requests (so the views offer them): its `answers(kind)`, else has the method."""
    answers = getattr(backend, "answers", None)
    if callable(answers):
        return bool(answers(kind))
    return kind == "compare" or callable(getattr(backend, kind, None))


def changed_span(a: str, b: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Character spans covering the words of `a` not in `b` and of `b` not in `a` (word-level diff), None if none."""
    wa = [(m.start(), m.end()) for m in re.finditer(r"\S+", a)]
    wb = [(m.start(), m.end()) for m in re.finditer(r"\S+", b)]
    sm = difflib.SequenceMatcher(None, [a[s:e] for s, e in wa], [b[s:e] for s, e in wb], autojunk=False)
    ca, cb = [], []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag != "equal":
            ca += wa[i1:i2]
            cb += wb[j1:j2]
    span = lambda ws: (ws[0][0], ws[-1][1]) if ws else None  # noqa: E731
    return span(ca), span(cb)


def compare(backend: Backend, req: CompareRequest) -> dict[str, Any]:
    """The comparison document: the model's and the user's text, and the training examples behind each one's changes."""
    model_text = req.model_text
    if model_text is None:
        model_text = backend.trace(TraceRequest(prompt=req.prompt, top_k=req.top_k))["target"]
    span_a, span_b = changed_span(model_text, req.user_text)
    if span_a is None and span_b is None:
        raise AttrilensError("Your text is the same as the model's, word for word. Change some words to compare.")
    model_doc = backend.trace(TraceRequest(prompt=req.prompt, target=model_text, span=span_a, top_k=req.top_k)) if span_a else None
    user_doc = backend.trace(TraceRequest(prompt=req.prompt, target=req.user_text, span=span_b, top_k=req.top_k)) if span_b else None
    return {"schema": "attrilens/compare/v1", "prompt": req.prompt, "model_text": model_text, "user_text": req.user_text,
            "model": model_doc, "user": user_doc}


def parse(kind: str, payload: Any) -> _Request:
    """The validated request of `kind`; bad fields raise AttrilensError naming them."""
    if kind not in REQUESTS:
        raise AttrilensError(f"Unknown request {kind!r}. Use one of: {', '.join(REQUESTS)}.")
    if not isinstance(payload, dict):
        raise AttrilensError(f"The {kind} request must be a JSON object, got {type(payload).__name__}.")
    try:
        return REQUESTS[kind].model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise AttrilensError(f"Bad {kind} request: {problems}. Fix these fields.") from None


def dispatch(backend: Backend, kind: str, payload: Any) -> dict[str, Any]:
    """Validate a request and answer it with `backend`."""
    req = parse(kind, payload)
    if kind == "compare":
        return compare(backend, req)
    handler = getattr(backend, kind, None)
    if not callable(handler):
        raise AttrilensError(f"This app does not answer {kind} requests. Start it with what they need "
                             "(e.g. `attrilens serve --verbatim-index DIR` for verbatim spans).")
    return handler(req)


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
        with self._lock:
            key = (req.context, req.query, req.response, method)
            result = self._context_cache.get(key)
            if result is None:
                result = ContextAttributor(self.lm(), method=method).attribute(req.context, req.query, req.response)
                for k in (key, (req.context, req.query, result.response, method)):
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
                               target_prompt=req.target_prompt).to_dict()

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
