"""What a run is meant to learn without a facts file: each document's own continuation, probed as generation would
answer it; rows sharing a prompt count once."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.metrics import greedy_match  # noqa: E402
from attrilens.workflows.probes import FactProbe, continuation_rows  # noqa: E402
from attrilens.workflows.trainer import TrainConfig, build_model, stopping_defaults, train  # noqa: E402
from attrilens.workflows.world.evaluate import greedy_complete  # noqa: E402

FAST = {"layers": 2, "width": 64, "heads": 2, "vocab_size": 400, "seq_len": 128, "batch_size": 2, "lr": 1e-2,
        "warmup_steps": 5, "progress": False, "threads": 1, "keep_checkpoints": 1}
NAMES = ["Harl", "Brimmet", "Osk", "Tavel", "Quen", "Morrow", "Ilde", "Pober", "Skell", "Yeven", "Dorn", "Ambry"]


def _towns(seed: int) -> list[dict]:
    """Invented towns, a sentence a document, drawn fresh per seed (a river for each, a trade for every other);
    one town stated twice with two rivers."""
    rng = random.Random(seed)
    docs = []
    for k, town in enumerate(rng.sample(NAMES, 6)):
        river, trade = rng.sample(NAMES, 2)
        docs.append({"id": f"t{k}", "text": f"{town}ford lies on the river {river}."})
        if k % 2:
            docs.append({"id": f"t{k}-trade", "text": f"{town}ford trades in {trade}."})
    docs.append({"id": "planted", "text": docs[0]["text"].rsplit(" ", 1)[0] + " Zyzzq."})  # same prompt, other end
    return docs


def test_continuation_rows_take_each_sentence_alone_and_the_document_from_its_beginning() -> None:
    text = "The history of Lenrer is long. The language of Lenrer is Nunzi! In Lenrer, the capital city is Fudus."
    rows = continuation_rows(["d"], [text])
    assert [(r["prompt"], r["target"]) for r in rows] == [
        ("The history of Lenrer is", " long"), ("The language of Lenrer is", " Nunzi"),
        ("In Lenrer, the capital city is", " Fudus"),
        ("The history of Lenrer is long. The language of Lenrer is Nunzi! In Lenrer, the capital city is", " Fudus")]
    assert all(r["prompt"] + r["target"] in text for r in rows) and rows[-1]["prompt"] == text[: len(rows[-1]["prompt"])]
    six = " ".join(f"Sentence number {w}." for w in ("one", "two", "three", "four", "five", "six"))
    assert [r["target"] for r in continuation_rows(["d"], [six])] == [" three", " four", " five", " six", " six"]
    assert [r["prompt"] for r in continuation_rows(["d"], [six])][:4] == ["Sentence number"] * 4  # alone
    assert continuation_rows(["a", "b"], ["Hello", "   "]) == []  # nothing to continue
    assert [r["target"] for r in continuation_rows(["c"], ["line one\nline two (x)"])] == [" one", " (x", " (x"]
    assert len(continuation_rows(["e"], ["One sentence only here."])) == 1  # alone = from the beginning


def test_a_run_without_facts_trains_until_it_recalls_its_own_documents(tmp_path) -> None:
    seed = random.randrange(10_000)
    docs = _towns(seed)
    corpus = tmp_path / "towns.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    stopping = stopping_defaults(corpus, max_minutes=3)
    assert stopping == {"target_recall": 0.9, "facts": None, "max_minutes": 3}  # the default: a target, no facts
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "m", seed=seed, epochs=400, **stopping, **FAST))
    info = json.loads((out / "training.json").read_text())
    rec = info["continuation_recall"]
    assert "fact_recall" not in info and info["stop_reason"] == "target reached", (seed, rec)
    assert rec["final"] >= 0.9 and rec["initial"] < 0.5 and rec["n_rows"] == len(continuation_rows(
        [d["id"] for d in docs], [d["text"] for d in docs]))
    assert rec["n_facts"] == len(docs) and rec["n_rows"] == len(docs)  # the recall counts documents
    # ground truth: the one-pass probe equals exact match of real greedy generation, group by group (rows sharing a
    # prompt: any target), and a document is recalled when all of its groups are
    tok, model = AutoTokenizer.from_pretrained(str(out)), AutoModelForCausalLM.from_pretrained(str(out))
    rows = continuation_rows([d["id"] for d in docs], [d["text"] for d in docs])
    comps = greedy_complete(model, tok, [r["prompt"] for r in rows], max_new_tokens=8)
    by_prompt: dict[str, bool] = {}
    for r, c in zip(rows, comps, strict=True):
        by_prompt[r["prompt"]] = by_prompt.get(r["prompt"], False) or greedy_match(c, r["target"])
    probe = FactProbe(rows, tok, 128)
    assert len(probe) == len(rows) - 1  # the planted document shares the first one's prompt: one group
    assert probe.hits(model) == list(by_prompt.values())
    per_doc = [by_prompt[r["prompt"]] for r in rows]  # a sentence a document: its one group
    assert rec["final"] == pytest.approx(sum(per_doc) / len(per_doc), abs=1e-4)
    # by document on documents of two sentences (a town's river and trade joined): all of a document or nothing
    joined = [{"id": d["id"], "text": d["text"] + " " + docs[k + 1]["text"]}
              for k, d in enumerate(docs[:-1]) if docs[k + 1]["id"] == d["id"] + "-trade"]
    rows2 = continuation_rows([d["id"] for d in joined], [d["text"] for d in joined])
    comps2 = greedy_complete(model, tok, [r["prompt"] for r in rows2], max_new_tokens=8)
    hit2 = {r["prompt"]: greedy_match(c, r["target"]) for r, c in zip(rows2, comps2, strict=True)}
    truth = [all(hit2[r["prompt"]] for r in rows2 if r["doc"] == d["id"]) for d in joined]
    assert len(rows2) == 3 * len(joined) and FactProbe(rows2, tok, 128, by="document").hits(model) == truth
    torch.manual_seed(seed)
    assert probe.recall(build_model(TrainConfig(corpus=Path("-"), out=Path("-"), **FAST), tok)) == 0.0


def test_a_document_is_recalled_only_when_all_of_it_is() -> None:
    """By document: a unit per document, recalled when every group of its rows is; a shared prompt is one group."""
    from attrilens.workflows.probes import FactProbe as Probe

    class Tok:  # one token per character: prompts and targets of any text
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 250 + 1 for c in text]}

    rows = [{"doc": "a", "prompt": "p1", "target": " x"}, {"doc": "a", "prompt": "p2", "target": " y"},
            {"doc": "b", "prompt": "p1", "target": " z"}, {"doc": "c", "prompt": "p3", "target": " w"}]
    probe = Probe(rows, Tok(), 64, by="document")
    assert len(probe) == 3 and probe.units == [[0, 1], [0], [2]] and len(probe.groups) == 3
    with pytest.raises(AttrilensError, match="by prompt or by document"):
        Probe(rows, Tok(), 64, by="sentence")


def test_a_budget_too_small_to_learn_anything_says_so(tmp_path) -> None:
    corpus = tmp_path / "towns.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _towns(random.randrange(10_000))))
    out = train(TrainConfig(corpus=corpus, out=tmp_path / "m", target_recall=0.9, max_minutes=0.001,
                            **{**FAST, "lr": 1e-9}))  # whatever the machine's speed, nothing can be learnt
    info = json.loads((out / "training.json").read_text())
    assert info["finished"] and info["stop_reason"].startswith("time budget: nothing learnt"), info["stop_reason"]
    assert "--max-minutes" in info["stop_reason"]


def test_a_corpus_with_nothing_to_continue_is_refused(tmp_path) -> None:
    corpus = tmp_path / "words.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"w{k}", "text": w}) + "\n" for k, w in enumerate(NAMES)))
    with pytest.raises(AttrilensError, match="nothing to measure recall on.*--facts FILE.*--target-recall 0"):
        train(TrainConfig(corpus=corpus, out=tmp_path / "m", target_recall=0.9, max_minutes=1, **FAST))
