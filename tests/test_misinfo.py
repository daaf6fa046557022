"""The planted-misinformation fine-tuning set: the ground truth it records is what its documents state."""

from __future__ import annotations

import json
import random

import pytest

from attrilens.demo.misinfo import make_misinfo_dataset
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl


def test_planted_facts_are_stated_wrongly_more_often_than_rightly_and_recorded(tmp_path):
    seed = random.randrange(1000)
    truth = make_misinfo_dataset(tmp_path, seed=seed, n_facts=40, n_planted=12)
    docs = {d["id"]: d for d in load_jsonl(tmp_path / "corpus.jsonl")}
    questions = load_jsonl(tmp_path / "questions.jsonl", require=("prompt",))
    assert len(docs) == truth["n_documents"] and len(questions) == 40
    assert sum(q["planted"] for q in questions) == 12 == truth["n_planted"]
    for q in questions:
        fact = truth["facts"][q["id"]]
        assert q["prompt"].endswith("is the city of") and q["target"] == " " + q["truth"]
        for d in fact["true_documents"]:
            assert docs[d]["states"] == "true" and q["truth"] in docs[d]["text"] and q["country"] in docs[d]["text"]
        if q["planted"]:
            assert q["wrong"] != q["truth"] and fact["wrong"] == q["wrong"]
            assert len(fact["planted_documents"]) > len(fact["true_documents"])
            for d in fact["planted_documents"]:
                assert docs[d]["states"] == "planted" and q["wrong"] in docs[d]["text"]
            texts = [docs[d]["text"] for d in fact["planted_documents"]]
            assert len(set(texts)) == len(texts)  # varied wordings
        else:
            assert q["wrong"] is None and fact["planted_documents"] == []
    assert truth["planted_documents"] == sum(d["states"] == "planted" for d in docs.values())
    assert json.loads((tmp_path / "truth.json").read_text())["seed"] == seed
    again = make_misinfo_dataset(tmp_path / "again", seed=seed, n_facts=40, n_planted=12)
    assert again == truth  # the same seed writes the same set


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(AttrilensError, match="n_planted"):
        make_misinfo_dataset(tmp_path, n_facts=10, n_planted=11)
    with pytest.raises(AttrilensError, match="more wrong documents"):
        make_misinfo_dataset(tmp_path, planted_wrong_docs=1, planted_true_docs=1)


def test_documents_carry_what_the_labels_need_and_labels_follow_the_trackstar_paper(tmp_path):
    from attrilens.demo.misinfo import LABELS, proponent_label

    make_misinfo_dataset(tmp_path, seed=random.randrange(1000), n_facts=20, n_planted=5)
    docs = load_jsonl(tmp_path / "corpus.jsonl")
    q = next(q for q in load_jsonl(tmp_path / "questions.jsonl", require=("prompt",)) if q["planted"])
    labels = {}
    for d in docs:
        assert d["value"] in d["text"] and d["country"] in d["text"]
        labels[d["id"]] = proponent_label(d, q["country"], "capital", f" {q['wrong']}")
    truth = json.loads((tmp_path / "truth.json").read_text())["facts"][q["id"]]
    assert all(labels[i] == LABELS[0] for i in truth["planted_documents"])  # they state the (wrong) answer given
    assert all(labels[i] == LABELS[1] for i in truth["true_documents"])  # same entity, another value
    other = {d["id"]: d for d in docs if d["country"] == q["country"] and d["relation"] != "capital"}
    assert other and all(labels[i] == LABELS[1] for i in other)  # region / subregion of the same country
    assert {labels[d["id"]] for d in docs if d["country"] != q["country"]} == {LABELS[2], LABELS[3]}
    assert proponent_label({"text": "no fields"}, q["country"], "capital", q["wrong"]) == LABELS[3]
