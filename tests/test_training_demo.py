"""Ground truth for lens 2 on the shipped demo: TrackStar finds the documents that state a memorised fact."""

from __future__ import annotations

import numpy as np
import torch

from attrilens.demo import paths
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.training.index import build_index

N_EVAL = 128  # facts whose prompts fit R_eval; every other fact is scored
PROJ_DIM = 65536  # the paper's d = 2^16
# Measured on the shipped (phase-3) target at d = 2^16 with the default ridge (damping 1e-2), scoring the 352
# facts outside R_eval, over four draws: hit@10 0.56–0.63, mean 0.60 (0.53 at 2^14, 0.37 at 2^12; a random ranking
# gives ≈ 0.04). The issue asks for "most queries".
MIN_HIT_AT_10 = 0.5


def test_trackstar_puts_a_gold_document_in_the_top_10_for_most_demo_facts(tmp_path):
    """Statement prompts of facts (the wording the model completes; it answers none of the question wordings).

    R_eval comes from other facts' prompts than the ones scored; the facts are drawn afresh each run.
    """
    torch.set_num_threads(1)
    model_dir, world_dir = paths.demo_model_dir("target"), paths.demo_world_dir()  # shipped: absent is a failure
    lm = LM.from_pretrained(model_dir)
    facts = load_jsonl(world_dir / "facts.jsonl", require=("prompt", "target", "docs"))
    rng = np.random.default_rng()
    order = rng.permutation(len(facts))
    r_eval = [facts[i] for i in order[:N_EVAL]]
    scored = [facts[i] for i in order[N_EVAL:]]
    idx = build_index(lm, world_dir / "corpus.jsonl", tmp_path / "idx", method="trackstar", proj_dim=PROJ_DIM,
                      model_dir=model_dir, eval_queries=r_eval, block_len=128, progress=False)
    hits = []
    for f in scored:
        res = idx.trace(f["prompt"], target=f["target"], top_k=10)
        top_docs = set(res.ids())
        hits.append(bool(top_docs & set(f["docs"])))
    rate = float(np.mean(hits))
    assert rate > MIN_HIT_AT_10, f"TrackStar hit@10 = {rate:.2f} on {len(hits)} demo facts"
