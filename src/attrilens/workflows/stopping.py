"""How a run of unknown length ends and what it keeps: the stop reason of a run out of time, the checkpoints of a
run that stops at a recall target (spread over it at a bounded cost), and the recall record of a training.json.
Shared by the scratch trainer (`demo.trainer`) and the LoRA trainer (`demo.lora`)."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_checkpoint(model, out: Path, state: dict, step: int, lr: float) -> None:
    """Save an intermediate checkpoint (HF dir) and record its step and learning rate."""
    model.save_pretrained(out / "checkpoints" / f"step-{step}")
    state["checkpoints"].append({"step": step, "lr": lr, "path": f"checkpoints/step-{step}"})


def checkpoint_unknown_length(model, out: Path, state: dict, step: int, lr: float, stride: int, keep: int) -> None:
    """Runs of unknown length: checkpoint every ``stride`` steps, doubling the stride (and dropping the checkpoints
    off it) whenever more than 2*keep are held, so they stay spread over the run at a bounded cost."""
    if not keep:
        return
    stride = state.setdefault("ck_stride", stride)
    if step % stride:
        return
    save_checkpoint(model, out, state, step, lr)
    while len(state["checkpoints"]) > 2 * keep:
        stride = state["ck_stride"] = stride * 2
        for ck in [c for c in state["checkpoints"] if c["step"] % stride]:
            shutil.rmtree(out / ck["path"], ignore_errors=True)
            state["checkpoints"].remove(ck)


def thin_checkpoints(out: Path, state: dict, final_step: int, keep: int) -> None:
    """Keep ``keep`` checkpoints spread evenly over the finished run (none at its final step: that is ``out``)."""
    cks = [c for c in state["checkpoints"] if c["step"] < final_step]
    if len(cks) > keep:
        chosen = {round((k + 1) * len(cks) / (keep + 1)) - 1 for k in range(keep)} if keep else set()
        cks = [c for i, c in enumerate(cks) if i in chosen]
    for ck in state["checkpoints"]:
        if ck not in cks:
            shutil.rmtree(out / ck["path"], ignore_errors=True)
    state["checkpoints"] = cks


def budget_reason(initial: float, final: float, target: float, curve: list[dict] | None = None) -> str:
    """The stop reason of a run that ran out of time: says so when it learnt (next to) nothing, or forgot."""
    peak = max([c["recall"] for c in curve or []] + [final])
    if peak - final >= 0.2:
        return (f"time budget: recall fell from {peak:.2f} to {final:.2f} (target {target:g}): the learning rate is "
                "too high for this corpus; pass a lower --lr")
    if final - initial < 0.05:
        return (f"time budget: nothing learnt (recall {initial:.2f} at the start, {final:.2f} at the end, target "
                f"{target:g}); give a larger --max-minutes")
    return f"time budget (recall {final:.2f} of the {target:g} target)"


def recall_info(info: dict) -> dict | None:
    """The recall record of a training.json: the facts file's (``fact_recall``) or the documents' own
    (``continuation_recall``), None for a run without either."""
    return info.get("fact_recall") or info.get("continuation_recall")
