"""The last part of both suites: one patched forward vs a plain one, and the batched Patchscope sweep vs one
forward per (layer, position), with the largest difference between the two (timings on this machine)."""

from __future__ import annotations

import time

import torch

from attrilens.bench.measure import median_time
from attrilens.bench.patchscopes.config import BenchConfig, sweep_layers
from attrilens.lm import LM, Patch
from attrilens.patchscopes.mappings import token_rows
from attrilens.patchscopes.patchscope import Patchscope, Query, encode_target
from attrilens.patchscopes.presets import TOKEN_IDENTITY


@torch.no_grad()
def speed_table(lm: LM, texts: list[str], cfg: BenchConfig, reps: int = 5):
    """Patched vs plain forward; batched sweep vs a loop of one forward per (layer, position)."""
    import pandas as pd

    L = lm.n_layers
    rows_ids = token_rows(lm, texts, max_tokens=cfg.max_tokens)[: cfg.speed_rows]
    g = torch.Generator().manual_seed(cfg.seed)
    mid = max(1, L // 2)
    patches = [Patch(r, mid, len(s) // 2, torch.randn(lm.d_model, generator=g)) for r, s in enumerate(rows_ids)]
    lm.run(rows_ids)  # warm-up
    plain = median_time(lambda: lm.run(rows_ids), reps)
    patched = median_time(lambda: lm.run(rows_ids, patches=patches), reps)
    prompt = max(rows_ids, key=len)[: cfg.speed_prompt_tokens]
    tids = tuple(encode_target(lm, TOKEN_IDENTITY))
    queries = [Query(tuple(prompt), layer, i, tids, layer, len(tids) - 1, len(tids) - 1)
               for layer in sweep_layers(L, cfg.layer_step) for i in range(len(prompt))]
    ps = Patchscope(lm, chunk_size=cfg.chunk_size, progress=False)

    def loop():
        hs, _ = lm.hidden_states([list(prompt)])
        out = []
        for q in queries:
            run = lm.run([list(tids)], patches=[Patch(0, q.target_layer, q.target_position, hs[q.layer][0, q.position])])
            out.append(run.logits[0, -1])
        return torch.stack(out)

    t0 = time.perf_counter()
    ref = loop()  # one timed run of the loop (it is the slow reference)
    t_loop = time.perf_counter() - t0
    t_batched = median_time(lambda: ps.logits(queries), 3)
    got = ps.logits(queries)
    max_diff = (got - ref.float()).abs().max().item()
    rows = [
        {"measure": f"forward of {len(rows_ids)} rows: plain", "seconds": plain, "ratio": 1.0},
        {"measure": "same forward with one patch per row", "seconds": patched, "ratio": patched / plain},
        {"measure": f"sweep {len(queries)} cells: loop, one forward per cell", "seconds": t_loop, "ratio": 1.0},
        {"measure": "sweep: batched (shared KV prefix, chunks)", "seconds": t_batched, "ratio": t_loop / t_batched},
    ]
    return pd.DataFrame(rows), {"cells": len(queries), "prompt_tokens": len(prompt), "max_abs_diff_batched_vs_loop": max_diff,
                                "chunk_size": cfg.chunk_size}
