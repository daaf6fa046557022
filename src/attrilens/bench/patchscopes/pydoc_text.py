"""The real suite's text: prose paragraphs of the CPython documentation shipped with Python (`pydoc_data.topics`),
split into fit and held-out paragraphs from disjoint topics."""

from __future__ import annotations

import random

from attrilens.errors import AttrilensError

PYDOC_EVAL_SHARE = 0.25  # share of the documentation's paragraphs (whole topics) held out for evaluation


def pydoc_paragraphs(min_chars: int = 200) -> dict[str, list[str]]:
    """Prose paragraphs of the CPython documentation shipped with Python (`pydoc_data.topics`) by topic: real
    English no one here wrote. Indented blocks (code, grammar) and repeats are left out; line breaks become spaces."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise AttrilensError("This Python has no pydoc_data (the CPython documentation topics). "
                             "Use a full CPython installation.") from None
    out: dict[str, list[str]] = {}
    seen: set[str] = set()  # topics repeat paragraphs (e.g. naming / execmodel): each is kept once, in its first topic
    for topic in sorted(topics):
        paras = []
        for p in topics[topic].split("\n\n"):
            text = " ".join(p.split())
            if len(p) >= min_chars and not any(line.startswith((" ", "\t")) for line in p.split("\n")) and text not in seen:
                seen.add(text)
                paras.append(text)
        if paras:
            out[topic] = paras
    return out


def pydoc_split(n_fit: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Fit and held-out evaluation paragraphs from disjoint documentation topics (topics shuffled with `seed`)."""
    paragraphs = pydoc_paragraphs()
    topics = sorted(paragraphs)
    random.Random(seed).shuffle(topics)
    total = sum(len(v) for v in paragraphs.values())
    fit: list[str] = []
    held: list[str] = []
    for topic in topics:
        (held if len(held) < PYDOC_EVAL_SHARE * total else fit).extend(paragraphs[topic])
    rng = random.Random(seed + 1)
    rng.shuffle(fit)
    rng.shuffle(held)
    if len(fit) < n_fit or len(held) < n_eval:
        raise AttrilensError(f"The documentation has {len(fit)} fit and {len(held)} held-out paragraphs; the benchmark "
                             f"asks for {n_fit} and {n_eval}. Ask for fewer.")
    return fit[:n_fit], held[:n_eval]
