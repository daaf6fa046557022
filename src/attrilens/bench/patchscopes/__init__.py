"""Patchscopes benchmark (`attrilens bench inspect`): a fact-world suite for the demo model, a real-model suite.

World suite (a demo model and its fact world; the default for local models):
1. Next-token decoding by layer on held-out (sequence, position) pairs of the world's texts: precision@1 (the read-out's
   top-1 equals the model's own final top-1), surprisal −log p_final(read-out top-1) and KL(final ‖ read-out) for the
   logit lens, a least-squares affine map into the last layer, a tuned lens, and token identity (few-shot and bare `?`).
2. Attribute extraction by layer on fact-world relations (test entities) vs a per-layer linear probe trained on
   dev entities, with the input-only control (the target prompt without a patch).
3. Multi-hop: hop 1 read from a context, hop 2 from memory; the (ℓ, ℓ*) pair is chosen on a dev split.
4. Speed: one patched forward vs a plain one; the batched sweep vs one forward per (layer, position). Memory: the
   process's peak resident set size over the whole run (`info.peak_rss_mib`).

Real suite (`run_real_benchmark`, the default for a registered real model): part 1 on CPython documentation prose
(`pydoc_data.topics`, fit and held-out topics disjoint), attribute extraction on `countryinfo` facts the model
completes greedily (capital, region, subregion) vs a linear probe and the no-patch control, and part 4.

One module per suite — `world` (`run_world_benchmark`), `real` (`run_real_benchmark`), `suites` (`choose_suite`,
`run_benchmark`, which picks one) — and one per part: `next_token`, `world_attributes`, `country_attributes`,
`multi_hop`, `speed`; `config` holds the sizes, `pydoc_text` the real suite's text. Re-exported here.
"""

from attrilens.bench.patchscopes.config import REAL_SIZES, BenchConfig, sweep_layers
from attrilens.bench.patchscopes.country_attributes import (
    complete_facts,
    fact_attribute_tables,
    fact_target,
    new_tokens,
)
from attrilens.bench.patchscopes.multi_hop import multi_hop_items, multi_hop_table
from attrilens.bench.patchscopes.next_token import by_layer_tables, next_token_table, tuned_lens_cost_table
from attrilens.bench.patchscopes.pydoc_text import PYDOC_EVAL_SHARE, pydoc_paragraphs, pydoc_split
from attrilens.bench.patchscopes.real import run_real_benchmark
from attrilens.bench.patchscopes.speed import speed_table
from attrilens.bench.patchscopes.suites import SUITES, choose_suite, run_benchmark
from attrilens.bench.patchscopes.world import run_world_benchmark
from attrilens.bench.patchscopes.world_attributes import SOURCE_TEMPLATE, attribute_table, split_entities

__all__ = [
    "PYDOC_EVAL_SHARE", "REAL_SIZES", "SOURCE_TEMPLATE", "SUITES", "BenchConfig", "attribute_table",
    "by_layer_tables", "choose_suite", "complete_facts", "fact_attribute_tables", "fact_target", "multi_hop_items",
    "multi_hop_table", "new_tokens", "next_token_table", "pydoc_paragraphs", "pydoc_split", "run_benchmark",
    "run_real_benchmark", "run_world_benchmark", "speed_table", "split_entities", "sweep_layers",
    "tuned_lens_cost_table",
]
