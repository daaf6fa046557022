"""Sources: a context split into paragraphs, sentences or words (or a user's spans) with character offsets.

A `Sources` object is what every context-attribution method ablates: `ablate(drop)` returns the context
with those sources removed, joined by the strongest separator (most newlines) that stood between the
sources kept on either side, so removing a paragraph's sentences one by one reproduces removing the paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from attrilens.errors import AttrilensError

LEVELS = ("paragraph", "sentence", "word")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Span:
    """One source: its index, text and [start, end) character offsets in the context."""

    index: int
    text: str
    start: int
    end: int
    level: str


def _paragraph_bounds(context: str) -> list[tuple[int, int]]:
    bounds, pos = [], 0
    for m in _PARAGRAPH_BREAK.finditer(context):
        bounds.append((pos, m.start()))
        pos = m.end()
    bounds.append((pos, len(context)))
    return [_strip(context, a, b) for a, b in bounds if context[a:b].strip()]


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _sentence_bounds(context: str) -> list[tuple[int, int]]:
    out = []
    for a, b in _paragraph_bounds(context):
        pos = a
        for m in _SENTENCE_END.finditer(context, a, b):
            out.append((pos, m.start()))
            pos = m.end()
        out.append((pos, b))
    return [(a, b) for a, b in out if b > a]


def _word_bounds(context: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(context)]


class Sources:
    """A context and the non-overlapping, ordered spans (sources) that attribution scores."""

    def __init__(self, context: str, bounds: Sequence[tuple[int, int]], level: str):
        if not context or not context.strip():
            raise AttrilensError("The context is empty. Pass a non-empty context.")
        self.context = context
        self.level = level
        prev = 0
        for i, (a, b) in enumerate(bounds):
            if not (isinstance(a, int) and isinstance(b, int)) or not 0 <= a < b <= len(context):
                raise AttrilensError(
                    f"Span {i} = ({a}, {b}) is not a non-empty character range inside the context of "
                    f"{len(context)} characters. Pass [start, end) offsets with 0 <= start < end <= len(context)."
                )
            if a < prev:
                raise AttrilensError(
                    f"Span {i} = ({a}, {b}) overlaps or precedes the span before it. Pass sorted, non-overlapping spans."
                )
            prev = b
        self.spans = [Span(i, context[a:b], a, b, level) for i, (a, b) in enumerate(bounds)]
        if not self.spans:
            raise AttrilensError("The context has no sources (it is only whitespace). Pass a non-empty context.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def split(cls, context: str, level: str = "sentence") -> Sources:
        """Split a context into paragraphs (blank lines), sentences (after . ! ? + space; never across paragraphs) or words."""
        if level not in LEVELS:
            raise AttrilensError(f"Unknown level {level!r}. Choose one of {', '.join(LEVELS)}.")
        if not context or not context.strip():
            raise AttrilensError("The context is empty. Pass a non-empty context.")
        finder = {"paragraph": _paragraph_bounds, "sentence": _sentence_bounds, "word": _word_bounds}[level]
        return cls(context, finder(context), level)

    @classmethod
    def from_spans(cls, context: str, spans: Iterable[tuple[int, int]]) -> Sources:
        """A user's own sources: sorted, non-overlapping [start, end) character ranges of the context."""
        return cls(context, [tuple(s) for s in spans], "custom")

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self):
        return iter(self.spans)

    def __getitem__(self, i: int) -> Span:
        return self.spans[i]

    def contained_in(self, outer: Sources) -> list[int]:
        """For each source, the index of the `outer` source that contains it (e.g. its paragraph)."""
        owners = []
        for s in self.spans:
            hit = [o.index for o in outer.spans if o.start <= s.start and s.end <= o.end]
            if not hit:
                raise AttrilensError(
                    f"Source {s.index} ({s.text[:40]!r}) lies in no {outer.level}. Use a level that nests inside it."
                )
            owners.append(hit[0])
        return owners

    # ------------------------------------------------------------------ ablation
    def ablate(self, drop: Iterable[int]) -> str:
        """The context without the dropped sources (text outside every source is kept)."""
        drop = set(drop)
        kept = [s for s in self.spans if s.index not in drop]
        if not drop:
            return self.context
        first, last = self.spans[0], self.spans[-1]
        head, tail = self.context[: first.start], self.context[last.end :]
        if not kept:
            return (head + tail).strip() or ""
        parts = [head, kept[0].text]
        for a, b in zip(kept, kept[1:], strict=False):
            gaps = [self.context[self.spans[i].end : self.spans[i + 1].start] for i in range(a.index, b.index)]
            if all(not g.strip() for g in gaps):
                parts.append(max(gaps, key=lambda g: (g.count("\n"), len(g) > 0)))
            else:  # text between sources that belongs to no source stays in the context
                parts.append("".join(gaps))
            parts.append(b.text)
        parts.append(tail)
        return "".join(parts)

    def keep_only(self, keep: Iterable[int]) -> str:
        """The context with only these sources."""
        keep = set(keep)
        return self.ablate(i for i in range(len(self)) if i not in keep)

    def token_owner(self, offsets: Sequence[tuple[int, int]]) -> list[int]:
        """For token character ranges (in context coordinates), the source each overlaps most (-1: none)."""
        owners = []
        j = 0
        for a, b in offsets:
            best, best_overlap = -1, 0
            while j < len(self.spans) and self.spans[j].end <= a:
                j += 1
            k = j
            while k < len(self.spans) and self.spans[k].start < b:
                s = self.spans[k]
                k += 1
                overlap = min(b, s.end) - max(a, s.start)
                if overlap > best_overlap:
                    best, best_overlap = s.index, overlap
            owners.append(best)
        return owners
