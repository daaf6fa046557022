"""`train`: one call of the scratch trainer, in named steps — check and resolve the config, return a finished run as
it is, set the run up (resumed from resume.safetensors when interrupted), run the step loop, save what it made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from attrilens.errors import AttrilensError
from attrilens.workflows.probes import default_eval_every, make_probe
from attrilens.workflows.resume import load_resume
from attrilens.workflows.trainer.config import TrainConfig, check_config, comparable_config, resolve_config
from attrilens.workflows.trainer.epoch_plan import EpochPlan
from attrilens.workflows.trainer.inputs import (
    load_corpus,
    make_optimizer,
    model_for,
    named_params,
    token_rows,
    tokenizer_for,
)
from attrilens.workflows.trainer.loop import Run, TrainingLoop
from attrilens.workflows.trainer.output import save_final, training_info, write_training_json

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture


def train(config: TrainConfig, capture: GradientCapture | None = None) -> Path:
    """Train (or resume, or return an already finished run) and return the output directory; with `capture`, also
    write index features of every training row of every step from the training's own backward pass
    (`attrilens.training.capture`: row names are the packed documents' ids joined by "+", a row's step is the
    number of updates before it, so rows of step s equal a post-hoc build at checkpoints/step-s).

    With ``config.target_recall`` it trains until the fact recall reaches it, the ``max_minutes`` budget runs out or
    the ``epochs`` cap is reached (the schedule decays over the budget: see `attrilens.workflows.trainer`)."""
    from transformers.utils import logging as hf_logging

    check_config(config)
    config = resolve_config(config)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars for every checkpoint
    out = Path(config.out)
    ids, texts = load_corpus(config)
    out.mkdir(parents=True, exist_ok=True)
    if _finished_already(config, out, capture):
        return out
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _set_up(config, out, ids, texts, capture)
    _begin(run)
    loop = TrainingLoop(run)
    finished, stop_reason, reason = loop.until_stop()
    save_final(config, out, run.model, run.tok, run.opt, run.params, capture, finished, run.state)
    info = training_info(config, run.state, run.plan, run.probe, run.model, (finished, stop_reason, reason),
                         (run.total, loop.cap_steps), ids, run.lengths, run.truncated)
    write_training_json(config, out, info)
    return out


def _finished_already(config: TrainConfig, out: Path, capture) -> bool:
    """Whether ``out`` holds this run, finished (then there is nothing to do)."""
    info_path = out / "training.json"
    if not info_path.is_file() or (out / "resume.safetensors").is_file():
        return False
    info = json.loads(info_path.read_text())
    if not (info.get("finished") and comparable_config(info["config"]) == comparable_config(config.to_dict())):
        return False
    if capture is not None:
        raise AttrilensError(f"{out} already holds this finished training run: there is no training left to "
                             "capture. Pass another --out (or delete it) to train and capture again.")
    return True


def _set_up(config: TrainConfig, out: Path, ids: list[str], texts: list[str],
            capture: GradientCapture | None) -> Run:
    """The run's tokenizer, recall probe, token rows, epoch plan, model and AdamW, and its state (resumed)."""
    tok = tokenizer_for(config, out, texts)
    probe, sample = make_probe(tok, ids, texts, config.facts, config.seq_len, config.eval_facts,
                               f"attrilens-train/{config.seed}")
    if not len(probe) and config.target_recall is not None:
        raise AttrilensError(f"No document of {config.corpus} has two words to continue, so there is nothing to "
                             "measure recall on. Pass --facts FILE, or --target-recall 0 for fixed epochs.")
    docs, truncated = token_rows(tok, texts, config.seq_len)
    lengths = [len(d) for d in docs]
    plan = EpochPlan(config, lengths)
    total = None if config.target_recall is not None else plan.total()
    model = model_for(config, tok)
    model.train()
    params = named_params(model)
    opt = make_optimizer(config, params)
    state = _state(config, out, model, opt)
    return Run(config, out, tok, model, opt, params, probe, sample, ids, docs, lengths, truncated, plan, total, state,
               capture)


def _state(config: TrainConfig, out: Path, model, opt: torch.optim.Optimizer) -> dict:
    """A fresh run's state, or the interrupted run's from resume.safetensors (which must be this config's run)."""
    state = {"step": 0, "losses": [], "tokens": 0, "train_seconds": 0.0, "checkpoints": [], "recall": [],
             "lr": 0.0, "config": config.to_dict()}
    resume_path = out / "resume.safetensors"
    if resume_path.is_file():
        saved = load_resume(resume_path, model, opt)
        if comparable_config(saved["config"]) != comparable_config(config.to_dict()):
            raise AttrilensError(f"{resume_path} belongs to a run with a different config. "
                                 "Delete it to start over, or use another --out.")
        state = {**state, **saved, "config": config.to_dict()}
    return state


def _begin(run: Run) -> None:
    """Before the first step of this call: the capture attached, the first epoch drawn, the recall before training
    (the baseline of a target run) and the steps between recall measurements."""
    config, state, plan, probe = run.config, run.state, run.plan, run.probe
    if run.capture is not None:
        run.capture.attach(run.model, run.tok, block_len=config.seq_len, first_step=state["step"], name=str(run.out),
                           optimizer=run.opt)
    plan.has(0)
    if config.target_recall is not None and "initial_recall" not in state and len(probe):
        state["initial_recall"] = round(probe.recall(run.model, run.sample), 4)  # what the model knew before
    state["eval_every"] = config.eval_every or default_eval_every(probe, run.sample, len(plan.batches),
                                                                  sum(run.lengths))
