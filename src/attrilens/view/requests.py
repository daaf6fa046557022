"""What the interactive views ask of Python, validated: trace a token span, attribute a context, inspect, compare,
find a response's verbatim spans in the training corpus.

The web app and the widget both route requests through `dispatch(backend, kind, payload)`: the request's shape is
checked here (no lens imported: the views sit on the core), then `check(kind, request)` when given (the app's
`attrilens.app.backend.check_request`: method and preset names against the lenses' registries), then the backend
answers. `attrilens.app.backend.LensBackend` answers with the three lenses' Python APIs; bad input is an
`AttrilensError` (HTTP 400). Answers are the lenses' own `to_dict()` documents.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from attrilens.errors import AttrilensError

MAX_TEXT = 100_000  # characters per text field
# a method's options as the form sends them: name → text (or a JSON number / boolean), built by the lens through
# `attrilens.options` (the same description the form's fields come from)
OptionTexts = dict[Annotated[str, Field(min_length=1, max_length=80)],
                   Annotated[str, Field(max_length=MAX_TEXT)] | bool | int | float]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def option_texts(self) -> dict[str, str]:
        """The request's method options as {name: text} (booleans as true/false), ready for `build_options`."""
        given = getattr(self, "options", None) or {}
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in given.items()}


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
    options: OptionTexts | None = Field(default=None, max_length=64)
    _span = field_validator("span")(_check_span)


class InspectRequest(_Request):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    preset: str | None = Field(default=None, max_length=40)
    layer: int | None = None
    position: int | None = None
    target_prompt: str | None = Field(default=None, max_length=MAX_TEXT)
    options: OptionTexts | None = Field(default=None, max_length=64)


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


RequestCheck = Callable[[str, Any], None]  # (kind, parsed request) -> None, or raises AttrilensError


def dispatch(backend: Backend, kind: str, payload: Any, check: RequestCheck | None = None) -> dict[str, Any]:
    """Validate a request (its shape, then `check` when given) and answer it with `backend`."""
    req = parse(kind, payload)
    if check is not None:
        check(kind, req)
    if kind == "compare":
        return compare(backend, req)
    handler = getattr(backend, kind, None)
    if not callable(handler):
        raise AttrilensError(f"This app does not answer {kind} requests. Start it with what they need "
                             "(e.g. `attrilens serve --verbatim-index DIR` for verbatim spans).")
    return handler(req)
