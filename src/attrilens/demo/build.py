"""Rebuild the offline demo: fact world (fixed seed) → target + proxy models → evaluation → package assets.

    python -m attrilens.demo.build --out runs/demo

(the defaults are the shipped models' recipe: --phase1-minutes 30.1 --minutes 40 --proxy-minutes 8
--phase3-minutes 95; about 2.5 hours on 2 cores).

Every stage is resumable: rerunning the same command reuses the world, continues an interrupted training run
from its ``resume.safetensors`` and skips finished ones. Progress goes to stderr; the evaluation is printed as
JSON on stdout and saved as ``eval.json``. With ``--assets`` (default: the package's ``assets/`` folder) the
models (fp32 weights; fp16 optimizer second moments and intermediate checkpoints) and the world files (without
the large ``train.jsonl``, which ``make_world`` regenerates byte-identically from ``world.json``) are copied
into ``assets/models/{target,proxy}`` and ``assets/world``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the machine is shared: do not spin on busy cores

from attrilens.demo.paths import ASSETS  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.workflows.trainer import TrainConfig, train  # noqa: E402
from attrilens.workflows.world.evaluate import evaluate_demo_model  # noqa: E402
from attrilens.workflows.world.generate import make_world  # noqa: E402

WORLD = {"seed": 0, "n_entities": 80, "n_train_episodes": 8000, "n_heldout_episodes": 200, "n_copy_docs": 1500,
         "n_copy_eval": 200, "questions_per_episode": 6, "fact_repeats": 35}
TARGET = {"arch": "llama", "layers": 4, "width": 128, "heads": 4, "epochs": 5, "vocab_size": 2048, "seq_len": 512,
          "batch_size": 8, "lr": 3e-3, "warmup_steps": 100, "curriculum_epochs": 1, "curriculum_max_tokens": 320,
          "keep_checkpoints": 2, "seed": 0}
# Phase 2 continues the target on a reading-heavy mixture of the same world (same seed and entities, hence
# byte-identical corpus/facts/queries): every training episode asks up to 12 questions, twice the copy lines.
WORLD2 = {**WORLD, "n_train_episodes": 12000, "questions_per_episode": 12, "n_copy_docs": 3000, "fact_repeats": 15}
TARGET2 = {**TARGET, "epochs": 2, "lr": 2e-3, "warmup_steps": 50, "curriculum_epochs": 0}
# Optional phase 3 continues the target on fresh episodes of the same world (episode_seed), with a lower LR.
WORLD3 = {**WORLD2, "episode_seed": 1}
TARGET3 = {**TARGET2, "epochs": 3, "lr": 1e-3}
PROXY = {**TARGET, "layers": 2, "width": 64, "heads": 2, "epochs": 2, "curriculum_epochs": 0}


def _log(msg: str) -> None:
    print(f"[build_demo] {msg}", file=sys.stderr, flush=True)


def package_model(src: Path, dst: Path) -> None:
    """Copy a trained model dir into ``dst``: weights, float32 second moments (float16 would zero most of them)
    and checkpoints."""
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "training.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    opt = load_file(str(src / "optimizer.safetensors"))
    # float32: AdamW's second moments reach far below float16's smallest value (6e-8) and would become 0
    save_file({k: v.float() for k, v in opt.items()}, str(dst / "optimizer.safetensors"),
              metadata={"format": "attrilens/adamw-exp_avg_sq/v1", "dtype": "float32"})
    for ck in sorted((src / "checkpoints").glob("step-*")):
        out = dst / "checkpoints" / ck.name
        out.mkdir(parents=True)
        for name in ("config.json", "generation_config.json"):
            if (ck / name).is_file():
                shutil.copy2(ck / name, out / name)
        w = load_file(str(ck / "model.safetensors"))
        save_file({k: v.to(torch.float16) for k, v in w.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt", "dtype": "float16"})


def package_world(src: Path, dst: Path, phase3: bool = False) -> None:
    """Copy the world files, held-out episodes only, without train.jsonl (recorded by sha256 in world.json)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("corpus.jsonl", "facts.jsonl", "queries.jsonl", "copy_eval.jsonl"):
        shutil.copy2(src / name, dst / name)
    with open(src / "episodes.jsonl", encoding="utf-8") as f, open(dst / "episodes.jsonl", "w", encoding="utf-8") as g:
        for line in f:
            if json.loads(line).get("split") == "heldout":
                g.write(line)
    info = json.loads((src / "world.json").read_text())
    info["train_jsonl_sha256"] = hashlib.sha256((src / "train.jsonl").read_bytes()).hexdigest()
    info["note"] = ("train.jsonl and the training episodes are not shipped; make_world(out, **make_world_args) "
                    "regenerates them byte-identically")
    info["make_world_args"] = WORLD2
    info["phase1_make_world_args"] = WORLD
    info["training"] = ("target: phase 1 on make_world(**phase1_make_world_args) train.jsonl, then phase 2 "
                        "(init_from phase 1) on make_world(**make_world_args) train.jsonl; proxy on the latter")
    if phase3:
        info["phase3_make_world_args"] = WORLD3
        info["training"] += "; then target phase 3 (init_from phase 2) on make_world(**phase3_make_world_args)"
    (dst / "world.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="scratch directory for the world and the runs")
    p.add_argument("--phase1-minutes", type=float, default=30.1,
                   help="time budget of target phase 1 (the LR schedule decays over it and training ends there)")
    p.add_argument("--minutes", type=float, default=40.0, help="time budget of target phase 2")
    p.add_argument("--proxy-minutes", type=float, default=8.0, help="time budget of the proxy run")
    p.add_argument("--phase3-minutes", type=float, default=95.0,
                   help="continue the target for at most this long (3 epochs) on fresh episodes (world3); it becomes "
                        "the target; 0 skips phase 3")
    p.add_argument("--target-epochs", type=int, default=TARGET["epochs"])
    p.add_argument("--proxy-epochs", type=int, default=PROXY["epochs"])
    p.add_argument("--assets", type=Path, default=ASSETS, help="where to package the models and the world")
    p.add_argument("--no-package", action="store_true", help="train and evaluate only")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    world1, world = a.out / "world", a.out / "world2"  # phase 1, phase 2 (the shipped world)
    for d, args in ((world1, WORLD), (world, WORLD2)):
        if not (d / "world.json").is_file():
            _log(f"making the world in {d}")
            make_world(d, **args)
    if (world1 / "corpus.jsonl").read_bytes() != (world / "corpus.jsonl").read_bytes():
        raise AttrilensError("The two phases' worlds have different corpora. Keep seed and n_entities equal.")
    common = {"progress": not a.no_progress, "resume_every_minutes": 3.0}
    _log("training the target model, phase 1")
    target1 = train(TrainConfig(corpus=world1 / "train.jsonl", out=a.out / "target-phase1",
                                schedule_minutes=a.phase1_minutes, **{**TARGET, "epochs": a.target_epochs}, **common))
    _log("training the target model, phase 2 (reading-heavy mixture)")
    target = train(TrainConfig(corpus=world / "train.jsonl", out=a.out / "target", init_from=target1,
                               tokenizer=target1, schedule_minutes=a.minutes, **TARGET2, **common))
    _log("training the proxy model (same tokenizer)")
    proxy = train(TrainConfig(corpus=world / "train.jsonl", out=a.out / "proxy", tokenizer=target,
                              schedule_minutes=a.proxy_minutes, **{**PROXY, "epochs": a.proxy_epochs}, **common))
    if a.phase3_minutes:
        world3 = a.out / "world3"
        if not (world3 / "world.json").is_file():
            _log(f"making the world in {world3}")
            make_world(world3, **WORLD3)
        if (world3 / "corpus.jsonl").read_bytes() != (world / "corpus.jsonl").read_bytes():
            raise AttrilensError("world3 has a different corpus. Keep seed and n_entities equal.")
        _log("training the target model, phase 3 (fresh episodes)")
        target = train(TrainConfig(corpus=world3 / "train.jsonl", out=a.out / "target-phase3", init_from=target,
                                   tokenizer=target, schedule_minutes=a.phase3_minutes, **TARGET3, **common))
    report = {}
    for name, d in (("target", target), ("proxy", proxy)):
        _log(f"evaluating {name}")
        info = json.loads((d / "training.json").read_text())
        report[name] = {**evaluate_demo_model(d, world), "n_parameters": info["n_parameters"],
                        "finished": info["finished"], "tokens": info["tokens"],
                        "wall_seconds": info["wall_seconds"], "tokens_per_second": info["tokens_per_second"]}
    (a.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if not a.no_package:
        _log(f"packaging into {a.assets}")
        package_model(target, a.assets / "models" / "target")
        package_model(proxy, a.assets / "models" / "proxy")
        package_world(world, a.assets / "world", phase3=bool(a.phase3_minutes))
        (a.assets / "models" / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
