"""The real suite of `attrilens bench inspect` (`run_real_benchmark`, the default for a registered real model):
part 1 on CPython documentation prose (`pydoc_data.topics`, fit and held-out topics disjoint), attribute
extraction on `countryinfo` facts the model completes greedily (capital, region, subregion) vs a linear probe
and the no-patch control, and the speed part."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from attrilens.bench.measure import log, record_run_facts
from attrilens.bench.patchscopes.config import BenchConfig
from attrilens.bench.patchscopes.country_attributes import fact_attribute_tables
from attrilens.bench.patchscopes.next_token import by_layer_tables, next_token_table
from attrilens.bench.patchscopes.pydoc_text import pydoc_split
from attrilens.bench.patchscopes.speed import speed_table
from attrilens.bench.report import Report
from attrilens.lm import LM


def run_real_benchmark(model: str | Path, quick: bool = False, lens_out: Path | None = None) -> Report:
    """The real-model suite: next-token read-outs by layer on held-out CPython documentation text (logit lens,
    affine map, tuned lens trained here, token identity), attribute extraction on countryinfo facts vs a linear
    probe, and speed. Prompts are plain text (no chat template)."""
    from attrilens.demo.countries import country_facts

    name = Path(str(model)).name
    cfg = BenchConfig.real(name, quick)
    torch.manual_seed(cfg.seed)
    lm = LM.from_pretrained(model).with_chat_template(False)
    fit_texts, eval_texts = pydoc_split(cfg.n_fit_texts, cfg.n_eval_seqs, cfg.seed)
    facts = country_facts()
    if quick:
        keep = sorted({f.country for f in facts})[:12]
        facts = [f for f in facts if f.country in keep]
    t0 = time.perf_counter()
    info: dict = {"model": name, "suite": "real", "quick": quick, "layers": lm.n_layers, "d_model": lm.d_model,
                  "vocabulary": lm.arch.unembed.weight.shape[0] if hasattr(lm.arch.unembed, "weight") else None,
                  "chat_template": False, "config": dataclasses.asdict(cfg),
                  "text": "pydoc_data.topics (CPython documentation) prose paragraphs; fit and held-out topics disjoint",
                  "facts": "countryinfo: capital, region, subregion"}
    tables, seconds = {}, {}
    log("[inspect bench] 1/3 next-token decoding by layer (CPython documentation text)")
    t = time.perf_counter()
    tables["next_token"], info["next_token"] = next_token_table(lm, fit_texts, eval_texts, cfg, lens_out)
    seconds["next_token"] = round(time.perf_counter() - t, 1)
    tables |= by_layer_tables(tables["next_token"], info["next_token"])
    log("[inspect bench] 2/3 attribute extraction (countryinfo facts)")
    t = time.perf_counter()
    (tables["fact_coverage"], tables["attribute_extraction"], tables["attribute_extraction_by_relation"],
     info["attribute_extraction"]) = fact_attribute_tables(lm, facts, cfg)
    seconds["attribute_extraction"] = round(time.perf_counter() - t, 1)
    log("[inspect bench] 3/3 speed")
    t = time.perf_counter()
    tables["speed"], info["speed"] = speed_table(lm, eval_texts, cfg, reps=1 if quick else 3)
    seconds["speed"] = round(time.perf_counter() - t, 1)
    info["part_seconds"] = seconds
    record_run_facts(info, t0)
    header = (f"# Patchscopes benchmark, real model{' (quick)' if quick else ''}: {name}\n\n"
              "Weights are dequantised Q4 GGUF values, not the original checkpoint: compare with published numbers "
              "with care. Plain prompts (no chat template). Next token by layer on held-out (sequence, position) "
              "pairs of CPython documentation prose (`pydoc_data.topics`; the affine map and tuned lens are fitted "
              "on other topics): precision@1 (read-out top-1 = the model's own top-1; higher is better), surprisal "
              "−log p_final(read-out top-1) and KL(final ‖ read-out) in nats (lower is better). Attribute extraction "
              "on countryinfo facts the model completes greedily, held-out countries: greedy exact match. The linear "
              "probe is a classifier over the values of the dev countries' facts, so it is scored only on the "
              "probe-able facts, whose value occurs among them (region, subregion; no held-out capital does, since "
              "every country has its own), and the Patchscope is shown on the same facts beside it."
              + _not_scored_note(tables["fact_coverage"])
              + f" Peak resident memory of the whole run: {info['peak_rss_mib']:.0f} MiB.")
    return Report("inspect", tables, info, header)


def _not_scored_note(coverage) -> str:
    """A sentence naming the relations with no held-out fact the model completes (they have no accuracy rows)."""
    empty = coverage[coverage["evaluated (held-out countries)"] == 0]
    if empty.empty:
        return ""
    parts = [f"{r['relation']} ({r['completed greedily']} of {r['facts']} facts completed, none of a held-out country)"
             for _, r in empty.iterrows()]
    return f" Not scored: {', '.join(parts)}."
