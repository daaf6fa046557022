"""Ground truth on the shipped demo reader: exact LOO puts the gold sentence first as often as the model reads right."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_EPISODES = 20


@pytest.mark.slow
def test_gold_sentence_ranks_first_under_exact_loo_on_the_demo_reader():
    from attrilens.bench.context import is_correct, load_episodes
    from attrilens.context import ContextAttributor
    from attrilens.demo import paths
    from attrilens.lm import LM

    model_dir, world_dir = paths.demo_model_dir("target"), paths.demo_world_dir()  # shipped: absent is a failure
    lm = LM.from_pretrained(model_dir)
    episodes = load_episodes(world_dir, N_EPISODES, lm=lm)
    attributor = ContextAttributor(lm, method="cached", level="sentence", batch_size=16, max_new_tokens=8)
    correct = gold_first = 0
    for e in episodes:
        correct += is_correct(attributor.generate(e["context"], e["question"]), e["answer"])
        r = attributor.attribute(e["context"], e["question"], f" {e['answer']}")
        gold_first += r.ranking()[0] == e["gold_sentence"]
    assert gold_first >= correct, f"gold first in {gold_first}/{len(episodes)}, model correct in {correct}"
