"""The synthetic fact world: determinism, structure, ground truth, bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from attrilens.context.template import PROMPT_TEMPLATE  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.jsonl import load_jsonl  # noqa: E402
from attrilens.workflows.world import (  # noqa: E402
    RELATIONS,
    make_world,
    render_episode,
    split_sentences,
)

FILES = ["corpus.jsonl", "facts.jsonl", "queries.jsonl", "episodes.jsonl", "copy_eval.jsonl", "train.jsonl",
         "world.json"]
SMALL = {"n_entities": 12, "n_train_episodes": 30, "n_heldout_episodes": 20, "n_copy_docs": 10, "n_copy_eval": 5,
         "fact_repeats": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=0, **SMALL)
    return out


def _word(name: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])")


def test_same_seed_same_bytes_different_seed_differs(world: Path, tmp_path: Path) -> None:
    summary = make_world(tmp_path / "again", seed=0, **SMALL)
    for name in FILES:
        assert (world / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    make_world(tmp_path / "other", seed=1, **SMALL)
    assert (world / "corpus.jsonl").read_bytes() != (tmp_path / "other" / "corpus.jsonl").read_bytes()
    assert summary["n_facts"] == 12 * len(RELATIONS)


def test_relations_and_templates() -> None:
    assert len(RELATIONS) >= 6
    for rel, t in RELATIONS.items():
        assert len(set(t["statements"])) >= 4, rel
        assert len(set(t["questions"])) >= 2, rel
        for q in t["questions"]:
            q_fixed = [p.strip() for p in q.split("{e}") if p.strip()]
            for s in t["statements"]:
                assert q != s
                assert not any(p in s for p in q_fixed if len(p.split()) >= 3), (q, s)
        for s in t["statements"]:
            assert s.endswith("{v}.")  # value last: the prefix is a memorisation prompt


def test_queries_never_share_wording_with_training_text(world: Path) -> None:
    texts = [r["text"] for r in load_jsonl(world / "corpus.jsonl")] + [r["text"] for r in load_jsonl(world / "train.jsonl")]
    blob = "\n".join(texts)
    queries = load_jsonl(world / "queries.jsonl", require=("prompt", "target", "gold"))
    assert len(queries) == 12 * len(RELATIONS)
    for q in queries:
        question = q["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
        assert question.endswith("?")
        assert question not in blob
        assert q["target"].startswith(" ") and not q["target"].startswith("  ")


def test_facts_documents_and_gold(world: Path) -> None:
    corpus = {r["id"]: r["text"] for r in load_jsonl(world / "corpus.jsonl")}
    assert all(re.fullmatch(r"doc-\d{5}", i) for i in corpus)
    facts = load_jsonl(world / "facts.jsonl", require=("entity", "relation", "value", "docs", "prompt", "target"))
    entities = {f["entity"] for f in facts}
    assert len(entities) == 12
    per_doc: dict[str, int] = {}
    for f in facts:
        assert 1 <= len(f["docs"]) <= 3
        templates = set()
        for d in f["docs"]:
            text = corpus[d]
            assert f["entity"] in text and f["value"] in text
            per_doc[d] = per_doc.get(d, 0) + 1
            hits = [s for s in RELATIONS[f["relation"]]["statements"]
                    if s.format(e=f["entity"], v=f["value"]) in text]
            assert hits, (f, text)
            templates.update(hits)
        assert len(templates) >= len(f["docs"])  # a fact's documents use different templates
        assert any(f"{f['prompt']}{f['target']}." in corpus[d] for d in f["docs"])
    assert all(1 <= n <= 3 for n in per_doc.values())
    assert set(per_doc) == set(corpus)
    # distractors: every document has a sentence that is not a fact statement
    n_facts_sentences = sum(per_doc.values())
    n_sentences = sum(len(split_sentences(t)) for t in corpus.values())
    assert n_sentences > n_facts_sentences
    queries = load_jsonl(world / "queries.jsonl", require=("gold",))
    by_id = {f["id"]: f for f in facts}
    for q in queries:
        f = by_id[q["fact"]]
        assert q["gold"] == f["docs"] and q["target"] == f" {f['value']}"
        assert all(f["value"] in corpus[d] for d in q["gold"])


def test_episodes(world: Path) -> None:
    episodes = load_jsonl(world / "episodes.jsonl", require=("context", "question", "answer", "gold_sentence"))
    world_entities = {f["entity"] for f in load_jsonl(world / "facts.jsonl", require=())}
    assert {e["split"] for e in episodes} == {"train", "heldout"}
    assert sum(len(split_sentences(e["context"])) >= 20 for e in episodes if e["split"] == "heldout") >= 10
    for e in episodes:
        paragraphs = e["context"].split("\n\n")
        assert 3 <= len(paragraphs) <= 10
        assert all(2 <= len(split_sentences(p)) <= 4 for p in paragraphs)
        sentences = split_sentences(e["context"])
        assert sum(len(split_sentences(p)) for p in paragraphs) == len(sentences)
        assert all(s.endswith(".") for s in sentences)
        for qa in [e, *e["extra_qa"]]:
            holding = [i for i, s in enumerate(sentences) if _word(qa["answer"]).search(s)]
            assert holding == [qa["gold_sentence"]], (qa, sentences)
        # the question's entity is in exactly one paragraph and is not a world entity
        entity = next(w for w in re.findall(r"[A-Z][a-z]+", e["question"]) if any(
            _word(w).search(p) for p in paragraphs))
        assert entity not in world_entities
        assert sum(bool(_word(entity).search(p)) for p in paragraphs) == 1
        gold = sentences[e["gold_sentence"]]
        assert entity in gold
        prompt, response = render_episode(e)
        assert prompt == PROMPT_TEMPLATE.format(context=e["context"], question=e["question"])
        assert prompt.startswith("Answer the question based on the provided context:\n\nContext:\n")
        assert prompt.endswith(f"\n\nQuestion: {e['question']}\nAnswer:") and response == f" {e['answer']}"


def test_copy_lines_and_train_mixture(world: Path) -> None:
    for c in load_jsonl(world / "copy_eval.jsonl", require=("prompt", "target")):
        lines = c["prompt"].split("\n")
        assert all(a == b for a, _, b in (line.partition(" -> ") for line in lines[:-1]))
        assert lines[-1] + c["target"] == f"{c['target'][1:]} -> {c['target'][1:]}"
    train = load_jsonl(world / "train.jsonl")
    ids = [r["id"] for r in train]
    assert len(ids) == len(set(ids))
    assert any(i.startswith("doc-") for i in ids) and any(i.startswith("ep-") for i in ids)
    assert any(i.startswith("copy-") for i in ids) and any("~1" in i for i in ids)
    info = json.loads((world / "world.json").read_text())
    assert info["n_train"] == len(train)


def test_load_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(AttrilensError, match="File not found"):
        load_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(AttrilensError, match="is empty"):
        load_jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\nnot json\n')
    with pytest.raises(AttrilensError, match=r"bad.jsonl:2 is not valid JSON"):
        load_jsonl(bad)
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"id": "a", "body": "x"}\n')
    with pytest.raises(AttrilensError, match='has no "text" field'):
        load_jsonl(notext)
    assert load_jsonl(notext, require=()) == [{"id": "a", "body": "x"}]


def test_make_world_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(AttrilensError, match="n_entities must be positive"):
        make_world(tmp_path, n_entities=0)
    with pytest.raises(AttrilensError, match="Unknown relations"):
        make_world(tmp_path, relations=["capital", "height"])


def test_episode_seed_keeps_the_world_and_redraws_episodes(world: Path, tmp_path: Path) -> None:
    make_world(tmp_path / "e1", seed=0, episode_seed=1, **SMALL)
    for name in ("corpus.jsonl", "facts.jsonl", "queries.jsonl"):
        assert (world / name).read_bytes() == (tmp_path / "e1" / name).read_bytes()
    assert (world / "episodes.jsonl").read_bytes() != (tmp_path / "e1" / "episodes.jsonl").read_bytes()
