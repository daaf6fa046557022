"""`bench misinfo` on a small misinformation run of the tiny demo model: the rows score the right queries, a row's
batched scoring ranks exactly as one query at a time, and BM25 finds planted documents that name the country and
the planted value."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from attrilens.bench.misinfo import _scores, removal_sets, run_misinfo_benchmark, wrong_and_right
from attrilens.demo.misinfo import LABELS, make_misinfo_dataset
from attrilens.demo.paths import demo_model_dir
from attrilens.jsonl import load_jsonl, write_jsonl
from attrilens.lm import LM
from attrilens.metrics import retrieval_metrics
from attrilens.training.ensemble import IndexEnsemble
from attrilens.workflows.lora import finetune_lora

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory as `misinfo_build` writes it: dataset, two data orders, answers (here: as if the model
    repeated every planted value and got every clean fact right, so that every fact is scored)."""
    root = tmp_path_factory.mktemp("misinfo")
    make_misinfo_dataset(root, seed=random.randrange(1000), n_facts=8, n_planted=3)
    for order in (0, 1):
        out = finetune_lora(demo_model_dir("target"), root / "corpus.jsonl", root / f"order-{order}", epochs=1,
                            batch_size=8, lr=1e-2, keep_checkpoints=1, seed=order, progress=False)
        rows = [{"id": q["id"], "answer": f" {q['wrong'] or q['truth']}", "truth": not q["wrong"],
                 "planted_value": bool(q["wrong"])} for q in load_jsonl(root / "questions.jsonl", require=("id",))]
        write_jsonl(out / "answers.jsonl", rows)
    return root


def test_rows_score_every_wrong_and_right_answer_as_one_query_at_a_time_would(run, tmp_path):
    wrong, right = wrong_and_right(run, 0, n_correct=20)
    assert len(wrong) == 3 and len(right) == 5
    methods = (("BM25", "bm25", {}, (0,), "mean"), ("DataInf (median of orders 0, 1)", "datainf", {}, (0, 1), "median"))
    report = run_misinfo_benchmark(run, tmp_path / "work", methods=methods, tail_k=1, progress=False)
    table = report.tables["planted and correct facts: retrieval of the gold documents"].set_index("method")
    labels = report.tables["label mix of the top-10 proponents of the wrong answers"].set_index("method")
    assert np.allclose(labels[list(LABELS)].sum(axis=1), 1.0, atol=2e-3)  # shares rounded to 3 places
    # the planted documents name the country and the planted value, which the query states: BM25 finds them
    assert table.loc["BM25", "planted recall@10"] >= 0.75 and table.loc["BM25", "planted MRR@10"] >= 0.5
    assert np.isfinite(table.loc["DataInf (median of orders 0, 1)", "tail-patch Δlog p (top-1)"])
    # the row scored its queries in batches: the same numbers as the ensemble's single-query scores
    lms = [LM.from_pretrained(run / f"order-{o}").with_chat_template(False) for o in (0, 1)]
    from attrilens.training.index import TrainingIndex

    ens = IndexEnsemble([TrainingIndex.open(tmp_path / "work" / f"datainf-order{o}", lm) for o, lm in enumerate(lms)],
                        "median")
    for name, queries in (("planted", wrong), ("correct", right)):
        rr, rec = [], []
        for q in queries:
            order = np.argsort(-ens.aggregated_scores(q["prompt"], q["target"]), kind="stable")
            r, recall, _ = retrieval_metrics(order, ens.indexes[0].corpus.docs, q["gold"], k=10)
            rr.append(r)
            rec.append(recall)
        assert table.loc["DataInf (median of orders 0, 1)", f"{name} recall@10"] == round(float(np.mean(rec)), 3)
        assert table.loc["DataInf (median of orders 0, 1)", f"{name} MRR@10"] == round(float(np.mean(rr)), 3)
    # and query by query: batches of 2 give every query its own scores (a mix-up would keep the means above)
    want = np.stack([ens.aggregated_scores(q["prompt"], q["target"]) for q in wrong + right])
    got = _scores(ens, wrong + right, batch=2)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    assert not np.allclose(got[0], got[1])


def test_removal_sets_take_the_top_k_distinct_documents_of_every_wrong_answer(run, tmp_path):
    corpus = load_jsonl(run / "corpus.jsonl", require=("id", "text"))
    wrong, _ = wrong_and_right(run, 0, 0)
    curation = (("BM25", "bm25", (0,)), ("random-k", "random", ()), ("oracle", "planted", ()))
    sets = removal_sets(run, tmp_path / "work", 2, corpus, wrong, curation=curation, progress=False)
    assert sets["oracle"] == {d for q in wrong for d in q["gold"]}
    assert 2 <= len(sets["BM25"]) <= 2 * len(wrong) and sets["BM25"] <= {d["id"] for d in corpus}
    assert sets["BM25"] & sets["oracle"]  # BM25's top hits include planted documents
    assert len(sets["random-k"]) <= 2 * len(wrong)
