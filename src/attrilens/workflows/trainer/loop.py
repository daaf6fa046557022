"""The optimizer steps of a scratch run: from its (resumed) step until a stop, each step takes the rate the schedule
gives (or ends the run), trains one batch, measures recall every ``eval_every`` steps, checkpoints and saves the
resume state when due; at the end, whether the run finished and why it stopped."""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attrilens.workflows.probes import FactProbe
from attrilens.workflows.resume import save_resume
from attrilens.workflows.stopping import checkpoint_unknown_length, save_checkpoint, thin_checkpoints
from attrilens.workflows.trainer.config import TrainConfig
from attrilens.workflows.trainer.epoch_plan import EpochPlan, collate, lr_at

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture


@dataclass
class Run:
    """Everything a set-up run trains with; ``state`` (step, curves, checkpoints, ...) is what it resumes from."""

    config: TrainConfig
    out: Path
    tok: Any
    model: Any
    opt: torch.optim.Optimizer
    params: dict[str, torch.nn.Parameter]
    probe: FactProbe
    sample: list[int]
    ids: list[str]
    docs: list[list[int]]
    lengths: list[int]
    truncated: int
    plan: EpochPlan
    total: int | None  # steps of a fixed-epoch run; None in target mode (the stop is not known in advance)
    state: dict
    capture: GradientCapture | None = None


class TrainingLoop:
    """The step loop of one call of `train` (``until_stop()``); ``state["eval_every"]`` must be set."""

    def __init__(self, run: Run):
        from tqdm import tqdm

        config, plan, total = run.config, run.plan, run.total
        self.run = run
        self.target_mode = config.target_recall is not None
        self.eval_every = run.state["eval_every"]
        self.log_every = max(1, (total or len(plan.batches) * 10) // 1000)
        # target mode: the schedule's length in steps, estimated from the first epoch (epochs pack almost alike)
        self.cap_steps = config.epochs * len(plan.batches) if self.target_mode else None
        self.budget = config.max_minutes * 60 if self.target_mode and config.max_minutes is not None else None
        self.ck_stride = max(self.eval_every, math.ceil((total or 0) / max(1, 4 * config.keep_checkpoints)))
        self.start = time.monotonic()
        self.last_resume = self.start
        self.stop_reason: str | None = None  # why the loop ended early and resumably: "max_steps" / "max_minutes"
        self.reason: str | None = None  # why a target-mode run ended: one of STOP_REASONS
        self.step = run.state["step"]
        self.at_target = None  # weights and optimizer state when the target was reached (this call only, not resumed)
        self.window: list[float] = []
        self.bar = tqdm(total=total, initial=self.step, desc=f"train {config.arch}", file=sys.stderr,
                        disable=not config.progress, mininterval=2.0, dynamic_ncols=True, unit="step")

    def until_stop(self) -> tuple[bool, str | None, str | None]:
        """Train until a stop; (finished, stop_reason, reason) as training.json records them."""
        while self.reason is None:
            scheduled = self._schedule()
            if scheduled is None:
                break
            lr, frac = scheduled
            loss = self._train_step(lr)
            self._measure(lr)
            self._show(loss, lr)
            self._checkpoint(lr, frac)
            self._save_resume_if_due()
        return self._end()

    def _schedule(self) -> tuple[float, float | None] | None:
        """The next step's learning rate and the run's progress (None: by steps), or None when the run stops
        before it (``reason`` / ``stop_reason`` then say why)."""
        run, config, state, step = self.run, self.run.config, self.run.state, self.step
        total = run.total
        if not run.plan.has(step) or (total is not None and step >= total):
            self.reason = "target reached" if "cooldown" in state else "epochs cap"
            return None
        if config.max_steps is not None and step >= config.max_steps:
            self.stop_reason = "max_steps"
            return None
        elapsed = state["train_seconds"] + time.monotonic() - self.start
        if self.target_mode:
            return self._target_schedule(elapsed)
        if config.max_minutes is not None and time.monotonic() - self.start >= config.max_minutes * 60:
            self.stop_reason = "max_minutes"
            return None
        frac = None
        if config.schedule_minutes is not None:
            frac = max(step / total, elapsed / (config.schedule_minutes * 60))
            if frac >= 1:
                return None
        return lr_at(config, step, total, frac), frac

    def _target_schedule(self, elapsed: float) -> tuple[float, float] | None:
        """Target mode: the cosine over the budget's progress, then, once the target was reached, a linear decay to
        lr * min_lr_ratio; None (``reason`` set) when the progress reaches 1 or the cooldown is done."""
        config, state, step = self.run.config, self.run.state, self.step
        budget, cap_steps = self.budget, self.cap_steps
        by_time = 0.0 if budget is None else (1.0 if budget <= 0 else elapsed / budget)
        frac = max(step / cap_steps, by_time)
        if frac >= 1:
            self.reason = "target reached" if "cooldown" in state else (
                "time budget" if by_time >= step / cap_steps else "epochs cap")
            return None
        lr = lr_at(config, step, cap_steps, frac)
        if "cooldown" in state:  # the target was reached: decay linearly to lr * min_lr_ratio, then stop
            c = state["cooldown"]
            done = step - c["from_step"]
            if done >= c["steps"]:
                self.reason = "target reached"
                return None
            floor = min(c["lr"], config.lr * config.min_lr_ratio)
            lr = c["lr"] + (floor - c["lr"]) * (done + 1) / c["steps"]
        return lr, frac

    def _train_step(self, lr: float) -> torch.Tensor:
        """One optimizer step on the plan's batch at ``lr``; the step, tokens and loss curve recorded."""
        run, state = self.run, self.run.state
        for g in run.opt.param_groups:
            g["lr"] = lr
        batch = run.plan.batches[self.step]
        input_ids, mask, labels = collate(batch, run.docs, run.tok.pad_token_id)
        if run.capture is not None:
            run.capture.begin_step(self.step, lr, ["+".join(run.ids[i] for i in row) for row in batch])
        loss = run.model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if run.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(run.params.values()), run.config.grad_clip)
        run.opt.step()
        run.opt.zero_grad(set_to_none=True)
        self.step += 1
        state["step"], state["lr"] = self.step, lr
        state["tokens"] += int(mask.sum())
        self.window.append(loss.item())
        if len(self.window) == self.log_every or self.step == run.total:
            state["losses"].append([self.step, round(sum(self.window) / len(self.window), 5)])
            self.window = []
        return loss

    def _measure(self, lr: float) -> None:
        """Every eval_every steps: the sample's recall on the curve; at the target (confirmed on the whole probe),
        the cooldown begins (its start kept to return to) or, without one, the run ends."""
        run, config, state, step = self.run, self.run.config, self.run.state, self.step
        probe, model = run.probe, run.model
        if not len(probe) or step % self.eval_every != 0:
            return
        recall = probe.recall(model, run.sample)
        now_s = state["train_seconds"] + time.monotonic() - self.start
        state["recall"].append({"step": step, "epoch": round(run.plan.epochs_done(step), 3), "recall": round(recall, 4),
                                "seconds": round(now_s, 1)})
        if self.target_mode and "cooldown" not in state and recall >= config.target_recall and (
                len(run.sample) == len(probe) or probe.recall(model) >= config.target_recall):  # all, not a sample
            if config.cooldown:
                state["cooldown"] = {"from_step": step, "steps": max(1, math.ceil(config.cooldown * step)),
                                     "lr": lr, "recall": round(probe.recall(model), 4)}
                self.at_target = _snapshot(model, run.opt)
            else:
                self.reason = "target reached"

    def _show(self, loss: torch.Tensor, lr: float) -> None:
        """The progress bar: one step more, its loss, rate and the last recall."""
        self.bar.update(1)
        post = {"loss": f"{loss.item():.3f}", "lr": f"{lr:.2e}"}
        if self.run.state["recall"]:
            post["recall"] = f"{self.run.state['recall'][-1]['recall']:.2f}"
        self.bar.set_postfix(post, refresh=False)

    def _checkpoint(self, lr: float, frac: float | None) -> None:
        """An intermediate checkpoint when due: spread over a run of unknown length (target mode), else at the
        k/(keep_checkpoints+1) points of the run's progress."""
        run, config, state, step = self.run, self.run.config, self.run.state, self.step
        if self.target_mode:
            checkpoint_unknown_length(run.model, run.out, state, step, lr, self.ck_stride, config.keep_checkpoints)
            return
        k = len(state["checkpoints"]) + 1
        n_ck, total = config.keep_checkpoints, run.total
        if n_ck and k <= n_ck and (frac if frac is not None else step / total) >= k / (n_ck + 1) and step < total:
            save_checkpoint(run.model, run.out, state, step, lr)

    def _save_resume_if_due(self) -> None:
        """resume.safetensors every resume_every_steps steps or resume_every_minutes, while steps remain."""
        run, config, state, step = self.run, self.run.config, self.run.state, self.step
        now = time.monotonic()
        due = (config.resume_every_steps and step % config.resume_every_steps == 0) or (
            now - self.last_resume >= config.resume_every_minutes * 60)
        if due and self.reason is None and run.plan.has(step) and (run.total is None or step < run.total):
            state["train_seconds"] += now - self.start
            self.start = self.last_resume = now
            if run.capture is not None:
                run.capture.flush()  # the rows of every step the resume state covers are on disk
            save_resume(run.out / "resume.safetensors", run.model, run.opt, state)

    def _end(self) -> tuple[bool, str | None, str | None]:
        """Close the loop: the training time counted, whether the run finished and why; a finished target run
        thins its checkpoints and, if the cooldown lost recall, returns to the weights at the target."""
        run, config, state, step = self.run, self.run.config, self.run.state, self.step
        self.bar.close()
        state["train_seconds"] += time.monotonic() - self.start
        if self.target_mode:
            finished = self.stop_reason is None
        else:
            finished = step >= run.total or (self.stop_reason is None and config.schedule_minutes is not None)
            self.reason = "epochs cap" if finished and step >= run.total else ("time budget" if finished else None)
        if finished and self.target_mode:
            thin_checkpoints(run.out, state, step, config.keep_checkpoints)
        if finished and self.at_target is not None and run.probe.recall(run.model) < state["cooldown"]["recall"]:
            _restore(run.model, run.opt, self.at_target)  # the cooldown lost recall: keep the model that reached it
            state["cooldown"]["kept"] = "the weights at the target (the cooled-down ones recalled less)"
        return finished, self.stop_reason, self.reason


def _snapshot(model, opt) -> tuple[dict, dict]:
    """A copy of the weights and the optimizer state (to return to them)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict())


def _restore(model, opt, snapshot: tuple[dict, dict]) -> None:
    """Return the model and optimizer to a `_snapshot`."""
    model.load_state_dict(snapshot[0])
    opt.load_state_dict(snapshot[1])
