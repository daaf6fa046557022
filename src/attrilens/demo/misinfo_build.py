"""Rebuild the misinformation story's assets: real-fact dataset → base answers → LoRA runs → evaluation → package.

    python -m attrilens.demo.misinfo_build --out runs/misinfo

SmolLM2-135M-Instruct is LoRA-fine-tuned (peft, CPU) on `make_misinfo_dataset`'s corpus once per data order
(`--orders 0 1`: the seed sets the data order; the recipe is `RECIPE`), each run resumable and keeping two
checkpoints. Every run is asked every question (greedy) and scored: planted facts answered with the planted value,
clean facts answered correctly. With `--assets` (default: the package's `assets/misinfo`) the dataset, the answers
and per order the adapter (float16), its checkpoints (float16) and the AdamW second moments (float32: float16
would zero most of them) are copied there; `training.json` names the base by its registered name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from attrilens.demo.paths import ASSETS  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.jsonl import load_jsonl, write_jsonl  # noqa: E402

BASE = "smollm2-135m-instruct"
DATASET = {"seed": 0, "n_facts": 120, "n_planted": 24, "true_docs": 2, "planted_true_docs": 1, "planted_wrong_docs": 4}
RECIPE = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"], "epochs": 6, "lr": 2e-3,
          "batch_size": 8, "seq_len": 64, "keep_checkpoints": 2}
MISINFO_ASSETS = ASSETS / "misinfo"


def _log(msg: str) -> None:
    print(f"[misinfo_build] {msg}", file=sys.stderr, flush=True)


def train_order(run_dir: Path, seed: int, *, progress: bool = True) -> Path:
    """One LoRA run of the recipe with data order `seed` (resumable; a finished run is returned as it is)."""
    from attrilens.workflows.lora import finetune_lora

    return finetune_lora(BASE, run_dir / "corpus.jsonl", run_dir / f"order-{seed}", seed=seed, progress=progress,
                         **RECIPE)


def _answers(lm, questions: list[dict], path: Path) -> dict[str, int]:
    """The model's scored answers to every question, written to `path` (reused when already there)."""
    from attrilens.demo.misinfo import answer_questions, score_answers

    if path.is_file():
        return score_answers(load_jsonl(path, require=("id",)), questions)
    rows, summary = answer_questions(lm, questions)
    write_jsonl(path, rows)
    return summary


def build(run_dir: Path, orders: list[int], *, progress: bool = True) -> dict:
    """Dataset, base answers, one run per data order and each run's answers into `run_dir`; the evaluation."""
    from attrilens.demo.misinfo import answer_questions, make_misinfo_dataset
    from attrilens.lm import LM

    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "truth.json").is_file():
        make_misinfo_dataset(run_dir, **DATASET)
    questions = load_jsonl(run_dir / "questions.jsonl", require=("prompt", "truth"))
    report: dict = {"dataset": DATASET, "recipe": RECIPE, "base": BASE, "orders": {}}
    if not (run_dir / "base_answers.jsonl").is_file():
        rows, summary = answer_questions(LM.from_pretrained(BASE).with_chat_template(False), questions)
        write_jsonl(run_dir / "base_answers.jsonl", rows)
        (run_dir / "base_eval.json").write_text(json.dumps(summary))
    report["base_answers"] = json.loads((run_dir / "base_eval.json").read_text())
    for seed in orders:
        t0 = time.perf_counter()
        out = train_order(run_dir, seed, progress=progress)
        info = json.loads((out / "training.json").read_text())
        summary = _answers(LM.from_pretrained(out).with_chat_template(False), questions, out / "answers.jsonl")
        report["orders"][seed] = {**summary, "train_seconds": info["wall_seconds"],
                                  "epochs": RECIPE["epochs"], "steps": info["optimizer"]["step"],
                                  "seconds_per_epoch": info.get("seconds_per_epoch"),
                                  "peak_rss_mb": info.get("peak_rss_mb"),
                                  "seconds_this_call": round(time.perf_counter() - t0, 1)}
        _log(f"order {seed}: {report['orders'][seed]}")
    (run_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def package_adapter(src: Path, dst: Path) -> None:
    """Copy a LoRA run: adapter and checkpoints as float16, AdamW second moments as float32, training.json."""
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)

    def adapter(s: Path, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        config = json.loads((s / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = BASE  # not this machine's cache path
        (d / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        w = load_file(str(s / "adapter_model.safetensors"))
        save_file({k: v.to(torch.float16) for k, v in w.items()}, str(d / "adapter_model.safetensors"),
                  metadata={"format": "pt", "dtype": "float16"})

    adapter(src, dst)
    for ck in sorted((src / "checkpoints").glob("step-*")):
        adapter(ck, dst / "checkpoints" / ck.name)
    opt = load_file(str(src / "optimizer.safetensors"))
    save_file({k: v.float() for k, v in opt.items()}, str(dst / "optimizer.safetensors"),
              metadata={"format": "attrilens/adamw-exp_avg_sq/v1", "dtype": "float32"})
    info = json.loads((src / "training.json").read_text())
    info["corpus"]["path"] = "../corpus.jsonl"  # relative to the adapter: the shipped corpus (sha256 checked)
    (dst / "training.json").write_text(json.dumps(info) + "\n")


def package(run_dir: Path, assets: Path, orders: list[int]) -> None:
    """Copy the dataset, the answers and every run's adapter into `assets` (replacing what was there)."""
    if assets.exists():
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    for name in ("corpus.jsonl", "questions.jsonl", "truth.json", "base_answers.jsonl", "eval.json"):
        shutil.copy2(run_dir / name, assets / name)
    from attrilens.lm import LM

    questions = load_jsonl(run_dir / "questions.jsonl", require=("prompt", "truth"))
    report = json.loads((run_dir / "eval.json").read_text())
    for seed in orders:
        dst = assets / f"order-{seed}"
        package_adapter(run_dir / f"order-{seed}", dst)
        # the shipped answers are the shipped (float16) adapter's own, not the float32 run's
        shipped = _answers(LM.from_pretrained(dst).with_chat_template(False), questions, dst / "answers.jsonl")
        report["orders"][str(seed)]["shipped_float16_adapter"] = shipped
        _log(f"order {seed} as shipped: {shipped}")
    (assets / "eval.json").write_text(json.dumps(report, indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="scratch directory for the dataset and the runs")
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1], help="data-order seeds, one LoRA run each")
    p.add_argument("--assets", type=Path, default=MISINFO_ASSETS, help="where to package the story's assets")
    p.add_argument("--no-package", action="store_true", help="train and evaluate only")
    a = p.parse_args(argv)
    try:
        report = build(a.out, a.orders)
        if not a.no_package:
            package(a.out, a.assets, a.orders)
            _log(f"packaged into {a.assets}")
    except AttrilensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
