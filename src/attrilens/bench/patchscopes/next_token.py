"""Part 1 of both suites: next-token decoding by layer on held-out (sequence, position) pairs — precision@1,
surprisal and KL(final ‖ read-out) of the logit lens, an affine map, a tuned lens trained here, token identity."""

from __future__ import annotations

import random
import time
from collections.abc import Collection
from pathlib import Path

import torch

from attrilens.bench.measure import log
from attrilens.bench.patchscopes.config import BenchConfig, sweep_layers
from attrilens.lm import LM
from attrilens.metrics import next_token_agreement
from attrilens.patchscopes.mappings import LayerMaps, TunedLens, collect_states, fit_affine, token_rows
from attrilens.patchscopes.patchscope import Patchscope, Query, encode_target
from attrilens.patchscopes.presets import BARE, TOKEN_IDENTITY


def _pairs(rows: list[list[int]], per_seq: int, rng: random.Random, skip: Collection[int] = ()) -> list[tuple[int, int]]:
    """`per_seq` random (row, position) pairs per row, never at a token in `skip` (special tokens: BOS)."""
    out = []
    for r, ids in enumerate(rows):
        positions = [i for i, t in enumerate(ids) if t not in skip]
        out += [(r, i) for i in sorted(rng.sample(positions, min(per_seq, len(positions))))]
    return out


@torch.no_grad()
def _pair_states(lm: LM, rows: list[list[int]], pairs: list[tuple[int, int]], batch: int = 16) -> dict[int, torch.Tensor]:
    """Residual states {layer: [n_pairs, d]} of every layer at the (row, position) pairs."""
    by_row: dict[int, list[int]] = {}
    for k, (r, _) in enumerate(pairs):
        by_row.setdefault(r, []).append(k)
    out = {layer: torch.empty(len(pairs), lm.d_model) for layer in range(lm.n_layers + 1)}
    for start in range(0, len(rows), batch):
        run = lm.run(rows[start : start + batch], read_layers=range(lm.n_layers + 1))
        for r in range(start, min(start + batch, len(rows))):
            for k in by_row.get(r, []):
                for layer in out:
                    out[layer][k] = run.hidden[layer][r - start, pairs[k][1]].float()
    return out


class _Scores:
    """Running per-(method, layer) sums of precision@1, surprisal and KL over read-out rows."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], list[float]] = {}

    def add(self, method: str, layer: int, logits: torch.Tensor, final_logp: torch.Tensor) -> None:
        hit, surprisal, kl = next_token_agreement(logits, final_logp)
        acc = self.sums.setdefault((method, layer), [0.0, 0.0, 0.0, 0])
        acc[0] += hit.sum().item()
        acc[1] += surprisal.sum().item()
        acc[2] += kl.sum().item()
        acc[3] += len(hit)

    def rows(self) -> list[dict]:
        return [{"method": m, "layer": layer, "precision@1": a[0] / a[3], "surprisal": a[1] / a[3], "KL": a[2] / a[3]}
                for (m, layer), a in self.sums.items()]


@torch.no_grad()
def next_token_table(lm: LM, fit_texts: list[str], eval_texts: list[str], cfg: BenchConfig, lens_out: Path | None = None):
    """precision@1, surprisal and KL(final ‖ read-out) by layer and method on held-out (sequence, position) pairs.

    Lens read-outs (logit lens, affine map, tuned lens) at every layer; token identity (few-shot and bare `?`,
    ℓ* = ℓ) at `sweep_layers(L, cfg.layer_step)`. The tuned lens is trained here on `fit_texts`; its cost is
    recorded. Everything is scored in chunks, so a large vocabulary never holds more than a chunk of logits.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    L = lm.n_layers
    fit_rows = token_rows(lm, fit_texts, max_tokens=cfg.max_tokens)
    eval_rows = token_rows(lm, eval_texts, max_tokens=cfg.max_tokens)
    pairs = _pairs(eval_rows, cfg.positions_per_seq, random.Random(cfg.seed), set(lm.tokenizer.all_special_ids))
    H = _pair_states(lm, eval_rows, pairs)
    step = 256
    final_logp = torch.cat([torch.log_softmax(lm.unembed(H[L][s : s + step]).float(), -1)
                            for s in range(0, len(pairs), step)])
    n_affine = len(fit_rows) if cfg.n_affine_texts is None else min(cfg.n_affine_texts, len(fit_rows))
    log(f"[inspect bench] {len(pairs)} held-out pairs; fitting the tuned lens on {len(fit_rows)} texts "
         f"({cfg.tuned_steps} steps x {cfg.tuned_batch_tokens} tokens)"
         + (f" and affine maps on {n_affine} texts" if cfg.affine else ""))
    methods = {"logit lens": lambda h, layer: h}
    info: dict = {}
    if cfg.affine:
        t0 = time.perf_counter()
        xs = collect_states(lm, fit_rows[:n_affine], range(L + 1))
        affine = LayerMaps({(layer, L): fit_affine(xs[layer], xs[L]) for layer in range(L + 1)})
        methods["affine map"] = lambda h, layer: affine(h, layer, L)
        info["affine"] = {"texts": n_affine, "tokens": xs[L].shape[0], "seconds": round(time.perf_counter() - t0, 1)}
        del xs
    t0 = time.perf_counter()
    with torch.enable_grad():
        lens = TunedLens.train(lm, fit_texts, steps=cfg.tuned_steps, batch_tokens=cfg.tuned_batch_tokens,
                               lr=cfg.tuned_lr, max_tokens=cfg.max_tokens, seed=cfg.seed)
    lens_seconds = time.perf_counter() - t0
    if lens_out is not None:
        lens.save(lens_out)
    scores = _Scores()
    methods["tuned lens"] = lambda h, layer: lens(h, layer, L)
    for name, fn in methods.items():
        for layer in range(L + 1):
            for s in range(0, len(pairs), step):
                scores.add(name, layer, lm.unembed(fn(H[layer][s : s + step], layer)), final_logp[s : s + step])
    layers = sweep_layers(L, cfg.layer_step)
    ps = Patchscope(lm, chunk_size=cfg.chunk_size, progress=False)
    per_chunk = max(1, cfg.queries_per_call // len(layers))
    for name, target in (("token identity", TOKEN_IDENTITY), ("token identity (bare ?)", BARE)):
        tids = tuple(encode_target(lm, target))
        for s in tqdm(range(0, len(pairs), per_chunk), desc=name, leave=False):
            chunk = list(range(s, min(s + per_chunk, len(pairs))))
            queries = [Query(tuple(eval_rows[pairs[k][0]]), layer, pairs[k][1], tids, layer, len(tids) - 1,
                             len(tids) - 1) for layer in layers for k in chunk]
            logits = ps.logits(queries)
            for j, layer in enumerate(layers):
                scores.add(name, layer, logits[j * len(chunk) : (j + 1) * len(chunk)], final_logp[chunk])
    info |= {"pairs": len(pairs), "eval_texts": len(eval_rows), "fit_texts": len(fit_rows),
             "token_identity_layers": layers,
             "tuned_lens": {"seconds": round(lens_seconds, 1), "steps": lens.train_info["steps"],
                            "batch_tokens": cfg.tuned_batch_tokens, "lr": cfg.tuned_lr,
                            "tokens_seen": lens.train_info["steps"] * min(cfg.tuned_batch_tokens, lens.train_info["tokens"]),
                            "tokens_available": lens.train_info["tokens"], "final_kl": lens.train_info["final_kl"]},
             "tuned_lens_seconds": round(lens_seconds, 1), "tuned_lens_final_kl": lens.train_info["final_kl"]}
    return pd.DataFrame(scores.rows()), info


def tuned_lens_cost_table(next_token_info: dict):
    """One row: what training the tuned lens here cost (seconds, steps, tokens) and where it ended (the mean KL of
    its last training batch, nats), from `next_token_table`'s info."""
    import pandas as pd

    t = next_token_info["tuned_lens"]
    return pd.DataFrame([{"fit texts": next_token_info["fit_texts"], "steps": t["steps"],
                          "tokens per step": t["batch_tokens"], "tokens seen": t["tokens_seen"],
                          "distinct tokens available": t["tokens_available"], "lr": t["lr"],
                          "seconds": t["seconds"], "final training KL": t["final_kl"]}])


def by_layer_tables(next_token, next_token_info: dict) -> dict:
    """The next-token table pivoted layer × method for each metric, and the tuned lens's cost (from
    `next_token_table`'s frame and info), by table name."""
    tables = {}
    for metric in ("precision@1", "surprisal", "KL"):
        pivot = next_token.pivot(index="layer", columns="method", values=metric)
        tables[f"next_token_{metric.replace('@', '_at_')}_by_layer"] = pivot.reset_index().rename_axis(columns=None)
    tables["tuned_lens_cost"] = tuned_lens_cost_table(next_token_info)
    return tables
