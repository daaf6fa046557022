"""The real-fact attribute-extraction table on hand-made facts: every column is computed from what it names."""

from __future__ import annotations

import os
import random
from collections import Counter

from attrilens.bench import patchscopes as bench
from attrilens.bench.patchscopes import country_attributes
from attrilens.demo.countries import CountryFact
from attrilens.testing import tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_majority_class_column_is_the_share_of_the_dev_countries_commonest_value(monkeypatch):
    rng = random.Random(7)
    regions = ["Europe", "Asia", "Africa"]
    facts = [CountryFact(f"Land{k}", "region", rng.choice(regions)) for k in range(16)]
    # every fact known: its completion is its target
    monkeypatch.setattr(country_attributes, "complete_facts", lambda lm, fs, batch_size=64: [f.target for f in fs])
    cfg = bench.BenchConfig(layer_step=2, chunk_size=16)
    _, pooled, by_relation, info = bench.fact_attribute_tables(tiny_lm("llama", seed=9), facts, cfg)
    countries = sorted({f.country for f in facts})
    random.Random(cfg.seed).shuffle(countries)
    dev = set(countries[: len(countries) // 2])
    majority = Counter(f.value for f in facts if f.country in dev).most_common(1)[0][0]
    values = {f.value for f in facts if f.country in dev}
    test = [f for f in facts if f.country not in dev and f.value in values]
    want = sum(f.value == majority for f in test) / len(test)
    assert set(by_relation["majority class (probe-able)"]) == {want}
    assert list(pooled["majority class (probe-able)"]) == [want] * len(pooled)
    assert info["dev_countries"] == len(dev)
