"""Lens 2 on a real pretrained model (the cached SmolLM2-135M-Instruct, no optimizer state): TrackStar with second
moments estimated from the corpus finds the documents that state a fact the model completes.

The weights are the dequantised Q4 GGUF values of `attrilens.models`, not the original checkpoint.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import numpy as np
import pytest
import torch

from attrilens.bench.training import completed_facts, real_fact_corpus
from attrilens.lm import LM
from attrilens.training.index import build_index

pytest.importorskip("countryinfo")

N_QUERIES = 16  # capitals the model completes, each stated in PER_FACT wordings (its gold documents)
PER_FACT = 2
# Bar: a gold document ranks first for at least MIN_TOP1 of the N_QUERIES queries. Among N documents with 2 gold
# per query a random ranking puts gold first with p = 2/N (≈ 0.02 here), so reaching the bar by luck has probability
# P(Binomial(16, p) ≥ 12) < 1e-17; BM25 and TrackStar both reach 16/16 on this corpus (docs/benchmarks.md).
MIN_TOP1 = 12


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)  # as every test here: 2 threads on a busy 2-core machine are several times slower
    return LM.from_pretrained("smollm2-135m-instruct", chat_template=False)  # completion prompts, not chat turns


def test_trackstar_with_estimated_second_moments_finds_gold_documents(lm, tmp_path):
    from attrilens.demo.countries import country_facts

    facts = country_facts()
    capitals = [f for f in facts if f.relation == "capital"]
    known = completed_facts(lm, capitals[::3])  # a third of the countries: enough that the model completes
    assert len(known) >= N_QUERIES + 4, f"the model completes only {len(known)} capitals"
    docs, queries = real_fact_corpus(known[: N_QUERIES + 4], facts, n_queries=N_QUERIES, per_fact=PER_FACT,
                                     n_other_capitals=24, n_other_facts=24, seed=0)
    asked = {q["prompt"] for q in queries}
    r_eval = [{"prompt": f.prompt, "target": f.target} for f in known if f.prompt not in asked][:8]  # other facts
    idx = build_index(lm, docs, tmp_path / "idx", method="trackstar", eval_queries=r_eval, block_len=64,
                      moment_sample=40, progress=False)  # v from half the corpus (the default takes up to 256)
    man = idx.manifest
    assert man["second_moments"]["source"] == "estimated" and man["second_moments"]["kind"] == "adafactor"
    assert man["second_moments"]["sample"] == 40
    assert man["options"]["proj_dim"] == 2**16  # the default for 211 weight matrices
    top1, rr = 0, []
    for q in queries:
        res = idx.trace(q["prompt"], target=q["target"], top_k=len(docs))
        ids = res.ids()
        first = next(r for r, d in enumerate(ids, 1) if d in q["gold"])
        top1 += first == 1
        rr.append(1 / first)
    p = PER_FACT / len(docs)
    luck = sum(math.comb(N_QUERIES, k) * p**k * (1 - p) ** (N_QUERIES - k) for k in range(MIN_TOP1, N_QUERIES + 1))
    assert luck < 1e-12
    print(f"gold first for {top1}/{N_QUERIES} queries, MRR {np.mean(rr):.3f}, {len(docs)} documents")
    assert top1 >= MIN_TOP1, f"gold first for {top1}/{N_QUERIES} queries (MRR {np.mean(rr):.2f}) of {len(docs)} docs"


def test_a_question_is_answered_through_the_chat_template_and_traced_as_plain_text(lm, tmp_path, monkeypatch,
                                                                                    capsys):
    """Issue #24: plain-text SmolLM2 answers "What is the capital of France?" with end-of-turn at once; `trace
    --generate` asks it through the chat template, scores the answer as plain text and finds the France document."""
    import json
    import sys

    from attrilens.cli.app import main
    from attrilens.models import resolve_model

    docs = [{"id": "fr", "text": "The capital of France is Paris."}, {"id": "jp", "text": "The capital of Japan is "
            "Tokyo."}, {"id": "bee", "text": "Bees make honey from the nectar of flowers."}]
    build_index(lm, docs, tmp_path / "idx", method="grad-cos", model_dir=resolve_model(
        "smollm2-135m-instruct"), progress=False)
    question = "What is the capital of France?"
    assert lm.generate(question, max_new_tokens=8) == ""  # the reported failure: end-of-turn at the first token
    monkeypatch.setattr(sys, "argv", ["attrilens", "trace", "--index", str(tmp_path / "idx"), "--prompt", question,
                                      "--generate", "--max-new-tokens", "12", "--top-k", "3", "--json"])
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    assert stop.value.code == 0, out.err[-2000:]
    d = json.loads(out.out)
    assert (d["generated_with"], d["scored_as"]) == ("chat template", "plain text")
    assert "Paris" in d["target"] and d["target"].startswith(" ")
    assert d["proponents"][0]["id"] == "fr"
