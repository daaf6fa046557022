"""Overhead of capturing index features during training: the same training steps with and without a
`GradientCapture`, in one run, interleaved (plain, captured, plain, captured, …) so that a busy machine's load
falls on both alike.

Run `attrilens bench capture [--steps N] [--repeats R] [--no-lora] [--proj-dim D] [--out DIR]`. Settings: the demo
target model (Llama, 4 layers, width 128, vocabulary 2048) trained on for N more steps on the demo world with the
tiny-model trainer (rows of 512 packed tokens, batch 8), and a LoRA fine-tune of it for --lora-steps steps (r 8 on
q/v, batch 8, one document of at most 256 tokens per row) with the LoRA trainer. Times are the training loop's own (what each trainer records) plus, for
the captured runs, the capture's final write; "second pass" is what a post-hoc build of the same rows at the final
model costs (the pass the capture saves). A first row alternates plain and captured steps on one batch in one
process (`alternating_steps`), which cancels most of a shared machine's load; "cpu" columns are the process' CPU
time (torch on 1 thread), which other jobs on the machine do not inflate as they do wall time (the "cpu" of a
whole trainer call includes loading and saving, alike in both runs); "flop ratio" counts the matmul FLOPs of one
step with torch's FlopCounterMode (exact; elementwise work and Python are not in it).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from attrilens.bench.measure import stderr_log
from attrilens.bench.report import Report, machine
from attrilens.errors import AttrilensError


def _trainer_run(target: Path, corpus: Path, work: Path, steps: int, capture: Any) -> tuple[float, int]:
    """Loop seconds of `steps` steps of the tiny-model trainer continuing the demo target model."""
    from attrilens.workflows.trainer import TrainConfig, train

    out = train(TrainConfig(corpus=corpus, out=work, init_from=target, tokenizer=target, epochs=100, max_steps=steps,
                            batch_size=8, seq_len=512, lr=1e-4, warmup_steps=1, keep_checkpoints=0, progress=False,
                            threads=None, resume_every_minutes=1e9), capture=capture)
    info = json.loads((out / "training.json").read_text())
    return float(info["wall_seconds"]), int(info["tokens"])


def _lora_run(target: Path, docs: list[dict], work: Path, steps: int, capture: Any) -> tuple[float, int]:
    """Seconds of `steps` LoRA steps (the LoRA trainer's wall time: loop, saves and the capture's final write)."""
    from attrilens.workflows.lora import finetune_lora

    out = finetune_lora(target, docs, work, epochs=100, max_steps=steps, batch_size=8, seq_len=256, lr=1e-3,
                        keep_checkpoints=0, progress=False, capture=capture)
    info = json.loads((out / "training.json").read_text())
    return float(info["wall_seconds"]), 0


def alternating_steps(steps: int, method: str, proj_dim: int | None) -> dict[str, Any]:
    """Plain and captured training steps alternating in one process on the same 8 × 512-token batch of the demo
    corpus (AdamW, lr 1e-5): the least noisy ratio on a shared machine; the capture pauses on the plain steps."""
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.lm import LM
    from attrilens.training.capture import GradientCapture
    from attrilens.training.corpus import read_documents

    lm = LM.from_pretrained(demo_model_dir("target"))
    tok, model = lm.tokenizer, lm.model
    texts = [d["text"] for d in read_documents(demo_world_dir() / "corpus.jsonl")]
    stream = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in ids + [tok.eos_token_id]]
    ids = torch.tensor(stream[: 8 * 512]).reshape(8, 512)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cap = GradientCapture(tempfile.mkdtemp(prefix="attrilens-bench-capture-"), method=method,
                          proj_dim="auto" if proj_dim is None else proj_dim)
    model.train()
    cap.attach(model, tok, block_len=512, optimizer=opt)

    def step(captured: bool) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if captured:  # ends the capture's step: TrackStar featurises its rows now, with the moments of this update
            cap.pause()
        return time.perf_counter() - t0, time.process_time() - c0

    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    cap.pause()
    for on in (False, True):  # exact matmul FLOPs of one step (what the load cannot change)
        if on:
            cap.resume()
        with FlopCounterMode(display=False) as counter:
            step(on)
        flops.append(counter.get_total_flops())
    plain, captured, hooks = [], [], []
    for s in range(steps):
        plain.append(step(False))
        cap.resume()
        cap.begin_step(s, 1e-5)
        h0 = cap.seconds
        captured.append(step(True))
        hooks.append(cap.seconds - h0)
    cap.close()
    p, c = statistics.median(w for w, _ in plain), statistics.median(w for w, _ in captured)
    pc, cc = statistics.median(u for _, u in plain), statistics.median(u for _, u in captured)
    return {"setting": "alternating steps, one process (demo target, 8 × 512 tokens)", "steps": steps,
            "rows captured": cap.manifest.corpus["n_blocks"],
            "dim": cap.method.dim, "plain s (median)": round(p, 3), "captured s (median)": round(c, 3),
            "ratio": round(c / p, 3), "overhead %": round(100 * (c / p - 1), 1),
            "plain cpu s": round(pc, 3), "captured cpu s": round(cc, 3), "cpu ratio": round(cc / pc, 3),
            "plain GFLOP": round(flops[0] / 1e9, 2), "captured GFLOP": round(flops[1] / 1e9, 2),
            "flop ratio": round(flops[1] / flops[0], 4),
            "capture hooks s (median)": round(statistics.median(hooks), 3)}


def run_benchmark(steps: int = 20, repeats: int = 2, lora: bool = True, proj_dim: int | None = None,
                  method: str = "grad-dot", lora_steps: int = 100, progress: bool = True) -> Report:
    """Training seconds with and without capture (tiny-model trainer, and LoRA), their ratio, and the second pass."""
    import pandas as pd

    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.lm import LM
    from attrilens.training.capture import GradientCapture
    from attrilens.training.corpus import Corpus, read_documents
    from attrilens.training.gradients import Example

    if steps < 1:
        raise AttrilensError(f"--steps must be at least 1, got {steps}.")
    from attrilens.training.capture import capture_methods

    if method.replace("_", "-") not in capture_methods():
        raise AttrilensError(f"--method {method!r} cannot be captured. Use one of {', '.join(capture_methods())}.")
    if proj_dim is not None and proj_dim < 1:
        raise AttrilensError(f"--proj-dim must be at least 1, got {proj_dim}.")
    if lora_steps < 1:
        raise AttrilensError(f"--lora-steps must be at least 1, got {lora_steps}.")
    if repeats < 1:
        raise AttrilensError(f"--repeats must be at least 1, got {repeats}.")
    torch.set_num_threads(1)  # the project's benchmark convention on its busy 2-core machine
    target, world = demo_model_dir("target"), demo_world_dir()
    docs = read_documents(world / "corpus.jsonl")
    log = stderr_log(progress)
    work = Path(tempfile.mkdtemp(prefix="attrilens-bench-capture-"))
    settings = [("tiny-model trainer (demo target, full fine-tune)",
                 lambda d, c: _trainer_run(target, world / "corpus.jsonl", d, steps, c))]
    if lora:
        settings.append(("LoRA trainer (demo target, r 8 on q/v)", lambda d, c: _lora_run(target, docs, d, lora_steps, c)))
    runs, summary = [], []
    for label, run in settings:
        times: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        extra: dict[str, Any] = {}
        for r in range(repeats):
            for captured in (False, True):
                d = work / f"{len(runs):03d}"
                cap = GradientCapture(d / "index", method=method, proj_dim="auto" if proj_dim is None else proj_dim) \
                    if captured else None
                t0, c0 = time.perf_counter(), time.process_time()
                seconds, tokens = run(d / "model", cap)
                if cap is not None and not cap.manifest.complete:  # the trainer stopped at max_steps
                    t1 = time.perf_counter()
                    cap.close(model_dir=d / "model")
                    seconds += time.perf_counter() - t1
                total, used = time.perf_counter() - t0, time.process_time() - c0
                times[captured].append(seconds)
                cpu[captured].append(used)
                row = {"setting": label, "repeat": r, "capture": captured, "train s": round(seconds, 3),
                       "call s": round(total, 3), "call cpu s": round(used, 3)}
                if cap is not None:
                    m = cap.manifest
                    row.update({"rows": m["corpus"]["n_blocks"], "dim": m["dim"],
                                "capture hooks s": m["capture"]["seconds"]})
                    extra = {"rows": m["corpus"]["n_blocks"], "dim": m["dim"], "index": str(d / "index")}
                runs.append(row)
                log(f"[bench capture] {label} repeat {r} capture={captured}: {seconds:.2f} s")
        # the pass the capture saves: featurise the same rows post hoc at the final model
        lm = LM.from_pretrained(Path(extra["index"]).parent / "model")
        cap_dir = Path(extra["index"])
        rows = Corpus.from_parquet(cap_dir / "corpus.parquet")
        manifest = json.loads((cap_dir / "manifest.json").read_text())
        from attrilens.training.methods import TDA_METHODS

        cls = TDA_METHODS.get(manifest["method"])  # TrackStar: corrected by the saved optimizer state
        m = cls(cls.make_options(**manifest["options"]), lm, Path(extra["index"]).parent / "model")
        t0 = time.perf_counter()
        m.featurize([Example.block(t) for t in rows.tokens])
        second = time.perf_counter() - t0
        plain, with_cap = statistics.median(times[False]), statistics.median(times[True])
        summary.append({"setting": label, "steps": lora_steps if label.startswith("LoRA") else steps, "rows captured": extra["rows"], "dim": extra["dim"],
                        "plain s (median)": round(plain, 3), "captured s (median)": round(with_cap, 3),
                        "ratio": round(with_cap / plain, 3), "overhead %": round(100 * (with_cap / plain - 1), 1),
                        "plain cpu s": round(statistics.median(cpu[False]), 3),
                        "captured cpu s": round(statistics.median(cpu[True]), 3),
                        "cpu ratio": round(statistics.median(cpu[True]) / statistics.median(cpu[False]), 3),
                        "second pass s": round(second, 3), "second pass / plain": round(second / plain, 3)})
    log("[bench capture] alternating plain and captured steps in one process")
    summary.insert(0, alternating_steps(steps, method, proj_dim))
    info = {"steps": steps, "lora_steps": lora_steps, "repeats": repeats, "method": method, "proj_dim": proj_dim or "auto",
            "machine": machine(), "workdir": str(work)}
    header = (f"# Capture overhead\n\n{steps} training steps with and without gradient capture ({method}), "
              f"{repeats} interleaved repeats; machine: {info['machine']}")
    return Report("capture", {"overhead": pd.DataFrame(summary), "runs": pd.DataFrame(runs)}, info, header)
