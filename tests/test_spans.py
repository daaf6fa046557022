"""Sources: splitting with exact character offsets, ablation text, user spans, and their error messages."""

from __future__ import annotations

import os
import random

import pytest

from attrilens.errors import AttrilensError
from attrilens.spans import Sources
from attrilens.workflows.world import split_sentences

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = "the capital of velmora is quenth founded bank ada zorvia currency lumen tolm ostra kesh".split()


def random_context(seed: int, paragraphs: int = 3) -> str:
    rng = random.Random(seed)
    paras = []
    for _ in range(paragraphs):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))).capitalize() + rng.choice(".!?")
                 for _ in range(rng.randint(2, 4))]
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("level", ["paragraph", "sentence", "word"])
def test_offsets_point_at_the_text(seed: int, level: str):
    context = random_context(seed)
    src = Sources.split(context, level)
    assert [s.index for s in src] == list(range(len(src)))
    for s in src:
        assert context[s.start : s.end] == s.text and s.text == s.text.strip() and s.level == level
    assert all(a.end <= b.start for a, b in zip(src.spans, src.spans[1:], strict=False))


@pytest.mark.parametrize("seed", [4, 5])
def test_sentences_match_the_world_splitter_and_nest_in_paragraphs(seed: int):
    context = random_context(seed, paragraphs=4)
    sentences = Sources.split(context, "sentence")
    assert [s.text for s in sentences] == split_sentences(context)
    paragraphs = Sources.split(context, "paragraph")
    owner = sentences.contained_in(paragraphs)
    assert owner == sorted(owner) and set(owner) == set(range(len(paragraphs)))


def test_sentences_never_cross_paragraphs_without_final_punctuation():
    context = "First line without a stop\n\nSecond one. Third one"
    assert [s.text for s in Sources.split(context, "sentence")] == ["First line without a stop", "Second one.", "Third one"]


@pytest.mark.parametrize("seed", [6, 7])
def test_dropping_every_sentence_of_a_paragraph_equals_dropping_the_paragraph(seed: int):
    context = random_context(seed, paragraphs=4)
    sentences, paragraphs = Sources.split(context, "sentence"), Sources.split(context, "paragraph")
    owner = sentences.contained_in(paragraphs)
    for p in range(len(paragraphs)):
        assert sentences.ablate(i for i, o in enumerate(owner) if o == p) == paragraphs.ablate([p])


def test_ablate_joins_with_the_strongest_separator():
    src = Sources.split("A b. C d.\n\nE f. G h.", "sentence")
    assert src.ablate([]) == src.context
    assert src.ablate([1]) == "A b.\n\nE f. G h."
    assert src.ablate([2]) == "A b. C d.\n\nG h."
    assert src.ablate([0]) == "C d.\n\nE f. G h."
    assert src.ablate([3]) == "A b. C d.\n\nE f."
    assert src.ablate([1, 2]) == "A b.\n\nG h."
    assert src.keep_only([0, 3]) == "A b.\n\nG h."
    assert src.ablate(range(4)) == ""


def test_user_spans_keep_unattributed_text():
    context = "Intro: alpha beta; gamma."
    src = Sources.from_spans(context, [(7, 12), (13, 17), (19, 24)])
    assert [s.text for s in src] == ["alpha", "beta", "gamma"] and src.level == "custom"
    assert src.ablate([1]) == "Intro: alpha ; gamma."  # both gaps kept verbatim
    assert src.ablate([0]) == "Intro: beta; gamma."


def test_token_owner_takes_the_largest_overlap():
    src = Sources.split("ab cd. ef gh.", "sentence")  # sentences [0, 6) and [7, 13)
    assert src.token_owner([(0, 2), (2, 5), (5, 8), (6, 9), (13, 14), (0, 0)]) == [0, 0, 0, 1, -1, -1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Sources.split("   ", "sentence"), "context is empty"),
        (lambda: Sources.split("a. b.", "clause"), "Unknown level 'clause'"),
        (lambda: Sources.from_spans("abcdef", [(0, 3), (2, 5)]), "overlaps or precedes"),
        (lambda: Sources.from_spans("abcdef", [(0, 9)]), "inside the context of 6 characters"),
        (lambda: Sources.from_spans("abcdef", [(3, 3)]), "non-empty character range"),
        (lambda: Sources.from_spans("abcdef", []), "no sources"),
        (lambda: Sources.split("a. b.\n\nc.", "word").contained_in(Sources.from_spans("a. b.\n\nc.", [(0, 2)])),
         "lies in no custom"),
    ],
)
def test_bad_spans_are_refused_with_the_fix(call, message: str):
    with pytest.raises(AttrilensError, match=message):
        call()
