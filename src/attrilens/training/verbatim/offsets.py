"""Character offsets of token ranges: where tokens [p, q) of a text's tokenisation lie in the text itself."""

from __future__ import annotations

from collections.abc import Sequence


def char_spans(tokenizer, text: str, ids: Sequence[int], ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) character offsets of each token range of `ids` (the tokenisation of `text`).

    First choice: the lengths of decoded prefixes, when each decoded prefix is a prefix of the text (every
    byte-level BPE and SentencePiece tokenizer that round-trips); else the fast tokenizer's offset mapping (a
    prefix that ends inside a multi-byte character); else the nearest place where the decoded range occurs.
    """
    ids = list(ids)
    cache: dict[int, int | None] = {}

    def prefix_len(n: int) -> int | None:
        if n not in cache:
            s = tokenizer.decode(ids[:n], clean_up_tokenization_spaces=False) if n else ""
            cache[n] = len(s) if text.startswith(s) else None
        return cache[n]

    mapping: list[tuple[int, int]] | None = None
    mapped = False
    out = []
    for p, q in ranges:
        a, b = prefix_len(p), prefix_len(q)
        if a is not None and b is not None and a < b:
            out.append((a, b))
            continue
        if not mapped:
            mapping, mapped = _offset_mapping(tokenizer, text, ids), True
        if mapping:
            out.append((mapping[p][0], mapping[q - 1][1]))
            continue
        piece = tokenizer.decode(ids[p:q], clean_up_tokenization_spaces=False)
        guess = a if a is not None else 0
        hits = [i for i in (text.find(piece, max(0, guess - len(piece))), text.find(piece)) if i >= 0]
        at = min(hits, key=lambda i: abs(i - guess)) if hits else guess
        out.append((at, min(len(text), at + max(1, len(piece)))))
    return out


def _offset_mapping(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """The fast tokenizer's offsets when it reproduces `ids`, else None."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"]) != ids:
        return None
    return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
