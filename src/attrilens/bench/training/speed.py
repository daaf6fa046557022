"""Speed tables of the training benchmarks (timings on this machine): featurisation paths (fast vs vmap vs a
loop) on the toy and on a real model, the fast path's lead by model width, and exact search latency."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from attrilens.bench.training.tail_patch import correction_scales


def featurisation_speed(model_dir: Path, blocks, n: int = 64, proj_dim: int = 4096):
    """Examples/s and tokens/s of the fast path vs the vmap path vs one backward per example (same run, same model)."""
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer
    lm = LM.from_pretrained(model_dir, attn_implementation="eager")
    ex = [Example.block(t) for t in blocks.tokens[:n]]
    tokens = sum(len(e.ids) for e in ex)
    plain = Featurizer(lm, proj_dim=proj_dim)
    corrected = Featurizer(lm, proj_dim=proj_dim, scales=correction_scales(lm, model_dir, plain, blocks))
    runs = [("fast, factored (no correction)", lambda: plain.features(ex, batch_size=16)),
            ("fast, per-layer G (Adam-corrected)", lambda: corrected.features(ex, batch_size=16)),
            ("vmap reference (Adam-corrected)", lambda: corrected.features_vmap(ex, batch_size=16)),
            ("loop of backward passes (Adam-corrected)", lambda: corrected.features_loop(ex))]
    rows = []
    plain.features(ex[:2])  # warm-up (first backward, lazy initialisation)
    corrected.features_vmap(ex[:2])
    for name, fn in runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append({"path": name, "examples/s": n / dt, "tokens/s": tokens / dt, "seconds": dt})
    frame = pd.DataFrame(rows)
    ref = frame.loc[frame.path.str.startswith("vmap"), "examples/s"].item()
    frame["× vmap"] = frame["examples/s"] / ref
    frame["bytes/example (fp16)"] = plain.dim * 2
    return frame


def featurisation_scaling(tokenizer, blocks, widths=(128, 256, 512), n: int = 32, proj_dim: int = 4096):
    """Fast path vs vmap path by model width: randomly initialised 4-layer Llamas (vocabulary 2048), no correction.

    The fast path costs about one training step whatever the width; the vmap path also forms every example's
    full weight gradient, which grows as width², so the ratio grows with the model.
    """
    import pandas as pd
    from transformers import LlamaConfig, LlamaForCausalLM

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer

    ex = [Example.block(t) for t in blocks.tokens[:n]]
    rows = []
    for width in widths:
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=width, intermediate_size=width * 11 // 4, num_hidden_layers=4,
                          num_attention_heads=max(4, width // 64), vocab_size=len(tokenizer), max_position_embeddings=512,
                          tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, attn_implementation="eager")
        lm = LM(LlamaForCausalLM(cfg).eval(), tokenizer, name=f"random llama width {width}")
        f = Featurizer(lm, proj_dim=proj_dim)
        f.features(ex[:2])  # warm-up
        f.features_vmap(ex[:2])
        t0 = time.perf_counter()
        f.features(ex, batch_size=16)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        f.features_vmap(ex, batch_size=16)
        vmap = time.perf_counter() - t0
        rows.append({"width": width, "parameters": lm.n_params(non_embedding=False), "fast examples/s": n / fast,
                     "vmap examples/s": n / vmap, "fast ÷ vmap": vmap / fast})
    return pd.DataFrame(rows)


def query_latency(folder: Path, ns=(10_000, 100_000), d: int = 4096, reps: int = 20, shard_rows: int = 16384):
    """p50/p95 exact top-10 search over synthetic fp16 shards vs the time to read those shards once."""
    import shutil

    import pandas as pd

    from attrilens.training.search import search_dot
    from attrilens.training.store import atomic_save

    rows = []
    g = np.random.default_rng(0)
    for n in ns:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        paths = []
        for i, start in enumerate(range(0, n, shard_rows)):
            rows_i = min(shard_rows, n - start)
            arr = g.standard_normal((rows_i, d), dtype=np.float32)
            arr = (arr / np.linalg.norm(arr, axis=1, keepdims=True)).astype(np.float16)  # unit rows, as TrackStar's
            p = folder / f"shard-{i:05d}.npy"
            atomic_save(p, arr)
            paths.append((start, p))
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _, p in paths:
                with open(p, "rb") as f:
                    while f.read(1 << 24):
                        pass
            reads.append(time.perf_counter() - t0)
        shards = [(s, np.load(p, mmap_mode="c")) for s, p in paths]
        times = []
        for _ in range(reps):
            q = torch.from_numpy(g.standard_normal(d, dtype=np.float32))
            t0 = time.perf_counter()
            search_dot(shards, q / q.norm(), 10, bounded=True)
            times.append(time.perf_counter() - t0)
        read = float(np.median(reads))
        p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
        rows.append({"N": n, "d": d, "bytes": n * d * 2, "read once (s)": read, "p50 (s)": p50, "p95 (s)": p95,
                     "p50 / read": p50 / read})
        del shards
    shutil.rmtree(folder, ignore_errors=True)
    return pd.DataFrame(rows)


def real_featurisation_speed(model: str, blocks, n: int = 16, batch_size: int = 8, proj_dim: int | None = None):
    """Examples/s of the fast paths (factored; factored with an Adafactor-style correction; per-layer G with an
    elementwise Adam-style one) against the vmap reference (elementwise correction), same examples, same run."""
    import pandas as pd

    from attrilens.lm import LM
    from attrilens.training.gradients import Example, Featurizer
    from attrilens.training.methods.gradient import GradientMethod
    from attrilens.training.moments import estimate_second_moments, moment_scales

    lm = LM.from_pretrained(model, chat_template=False, attn_implementation="eager")
    d = proj_dim or GradientMethod.default_proj_dim(lm)
    ex = [Example.block(t) for t in blocks.tokens[:n]]
    tokens = sum(len(e.ids) for e in ex)
    plain = Featurizer(lm, proj_dim=d)
    adam = moment_scales(estimate_second_moments(plain, ex, kind="adam", batch_size=batch_size), 1e-3)
    fact = moment_scales(estimate_second_moments(plain, ex, kind="adafactor", batch_size=batch_size), 1e-3)
    elementwise = Featurizer(lm, proj_dim=d, scales=adam)
    factored = Featurizer(lm, proj_dim=d, scales=fact)
    runs = [("fast, factored (no correction)", lambda: plain.features(ex, batch_size=batch_size)),
            ("fast, factored (Adafactor-style correction)", lambda: factored.features(ex, batch_size=batch_size)),
            ("fast, per-layer G (Adam-style correction)", lambda: elementwise.features(ex, batch_size=batch_size)),
            ("vmap reference (Adam-style correction)", lambda: elementwise.features_vmap(ex, batch_size=4))]
    plain.features(ex[:2])  # warm-up (first backward, lazy initialisation) of both paths
    elementwise.features_vmap(ex[:1], batch_size=1)
    rows = []
    for name, fn in runs:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append({"path": name, "examples/s": n / dt, "tokens/s": tokens / dt, "seconds": dt, "d": plain.dim})
    frame = pd.DataFrame(rows)
    frame["× vmap"] = frame["examples/s"] / frame.loc[frame.path.str.startswith("vmap"), "examples/s"].item()
    return frame
