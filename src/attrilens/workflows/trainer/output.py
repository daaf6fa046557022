"""What a scratch run leaves in ``out``: the model, tokenizer and AdamW second moments (and the resume state while
unfinished), and training.json — what ran, how long, why it stopped, the loss and recall curves, the data order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from attrilens.workflows.probes import CONTINUATION_DESCRIPTION, FactProbe
from attrilens.workflows.resume import save_resume
from attrilens.workflows.stopping import budget_reason, recall_info
from attrilens.workflows.trainer.config import TrainConfig
from attrilens.workflows.trainer.epoch_plan import EpochPlan, lr_at
from attrilens.workflows.trainer.inputs import named_params


def save_final(config: TrainConfig, out: Path, model, tok, opt, params: dict, capture, finished: bool,
                state: dict) -> None:
    """Write the model, tokenizer and AdamW second moments; close the capture; keep or drop the resume state."""
    from safetensors.torch import save_file

    model.save_pretrained(out)
    tok.save_pretrained(out)
    sq = {f"exp_avg_sq.{n}": opt.state[p]["exp_avg_sq"].contiguous() for n, p in params.items() if p in opt.state}
    if not sq:  # no step taken yet: zeros keep the file's contract
        sq = {f"exp_avg_sq.{n}": torch.zeros_like(p) for n, p in params.items()}
    save_file(sq, str(out / "optimizer.safetensors"), metadata={"format": "attrilens/adamw-exp_avg_sq/v1"})
    if capture is not None:
        if finished:
            capture.close(model_dir=out)
        else:
            capture.flush()
            capture.detach()
    resume_path = out / "resume.safetensors"
    if finished:
        resume_path.unlink(missing_ok=True)
    else:
        save_resume(resume_path, model, opt, state)


def training_info(config: TrainConfig, state: dict, plan: EpochPlan, probe: FactProbe | None, model,
          ending: tuple[bool, str | None, str | None], steps: tuple[int | None, int | None], ids: list[str],
          lengths: list[int], truncated: int) -> dict:
    """training.json: what ran, how long, why it stopped, the loss and recall curves and the data order."""
    (finished, stop_reason, reason), (total, cap_steps) = ending, steps
    step = state["step"]
    target_mode = config.target_recall is not None
    if target_mode:
        schedule = ("linear warmup + cosine to min_lr_ratio over max(step / cap_steps, training minutes / "
                    "max_minutes); at the recall target, a linear cooldown to min_lr_ratio over `cooldown` x the "
                    "steps so far, then stop")
        final_lr = state["lr"]
    else:
        schedule = "linear warmup + cosine to min_lr_ratio"
        final_lr = lr_at(config, max(0, step - 1), total)
    n_epochs = plan.epoch_of(step - 1) + 1 if step else 0
    info = {
        "schema": "attrilens/training/v1",
        "finished": finished,
        "stopped": stop_reason,
        "stop_reason": reason if finished else None,
        "config": config.to_dict(),
        "arch": config.arch,
        "n_parameters": sum(p.numel() for p in named_params(model).values()),
        "n_documents": len(lengths),
        "truncated_documents": truncated,
        "tokens_per_epoch": sum(lengths),
        "total_steps": total if total is not None else step,
        "cap_steps": cap_steps,
        "step": step,
        "epochs_run": round(plan.epochs_done(step), 3),
        "tokens": state["tokens"],
        "wall_seconds": round(state["train_seconds"], 2),
        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
        "optimizer": {"name": "AdamW", "step": step, "lr": config.lr, "final_lr": final_lr,
                      "betas": [config.beta1, config.beta2], "eps": config.eps,
                      "weight_decay": config.weight_decay, "schedule": schedule,
                      "file": "optimizer.safetensors", "keys": "exp_avg_sq.<parameter name>"},
        "checkpoints": state["checkpoints"],
        "loss_curve": state["losses"],
        "data_order": {
            "description": "each epoch: documents in permutation order, packed whole (next-fit) into rows of "
                           "<= seq_len tokens, batch_size rows per step",
            "document_ids": ids,
            "epoch_permutations": plan.orders if not target_mode else plan.orders[:n_epochs],
        },
    }
    if len(probe):
        final = probe.recall(model)
        rec = {"target": config.target_recall, "eval_every": state.get("eval_every"), "cooldown": state.get("cooldown"),
               "sample": min(len(probe), config.eval_facts), "initial": state.get("initial_recall"),
               "curve": state["recall"], "final": round(final, 4)}
        if config.facts is not None:
            info["fact_recall"] = {
                "facts": str(config.facts), "n_facts": len(probe), **rec,
                "description": "greedy exact match of each fact's prompt -> target; the curve on a fixed seeded "
                               "sample of `sample` facts every eval_every steps, `final` on all facts at the end"}
        else:
            info["continuation_recall"] = {
                "n_facts": len(probe), "n_rows": len(probe.pairs), **rec,
                "description": CONTINUATION_DESCRIPTION}
        if finished and reason == "time budget" and state.get("initial_recall") is not None:
            info["stop_reason"] = budget_reason(state["initial_recall"], final, config.target_recall, state["recall"])
    return info


def write_training_json(config: TrainConfig, out: Path, info: dict) -> None:
    """Write training.json atomically; a finished run says on stderr why it stopped (with progress on)."""
    tmp = (out / "training.json").with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, out / "training.json")
    if config.progress and info["finished"]:
        rec = recall_info(info)
        what = "fact recall" if "fact_recall" in info else "continuation recall"
        print(f"stopped: {info['stop_reason']} after {info['epochs_run']:g} epochs, {info['wall_seconds']:.0f} s"
              + (f"; {what} {rec['final']:.3f} of {rec['n_facts']}" if rec else ""), file=sys.stderr)
