"""LoRA fine-tuning of a trained model with peft (the model DataInf attributes); `LM.from_pretrained(out)` loads it back.

`finetune_lora(base_dir, corpus, out)` writes into `out`: the adapter (`adapter_config.json`,
`adapter_model.safetensors`), the tokenizer, `optimizer.safetensors` (final AdamW `exp_avg_sq.<parameter
name>` of the LoRA matrices, names as in the adapted model), `checkpoints/step-N/` (adapters) and
`training.json` (base directory, config, learning rates of the checkpoints, loss curve).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.corpus import read_documents
from attrilens.workflows.probes import CONTINUATION_DESCRIPTION
from attrilens.workflows.resume import load_resume, save_resume
from attrilens.workflows.trainer.epoch_plan import collate

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture

LORA_TARGETS = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}  # everything else: q_proj, v_proj
# Runs to a recall target (the CLI's default) adapt the MLP projections instead, at a higher rate: on a corpus of
# invented towns (seed 101, 48 documents) SmolLM2 fine-tuned on q/v at 1e-3 recalled every document and answered
# 1 of 45 questions through its chat template; on all linear layers 16-18; on the MLP 18 (1e-3), 20 (2e-3), 24
# (3e-3), none at 5e-3 (empty answers, though the documents were recalled) and divergence at 1e-2: 2e-3 keeps a
# margin below the rate that breaks the chat. Facts a model can be asked about live in its MLPs (ROME, MEMIT).
MLP_TARGETS = {"gpt2": ["c_fc", "mlp.c_proj"], "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"]}  # else gate/up/down
TARGET_MODE_LR = 2e-3
FIXED_EPOCHS_LR = 1e-3


def default_targets(model_type: str | None = None, target_mode: bool = True) -> list[str]:
    """The modules LoRA adapts when none are named: the MLP projections in runs to a recall target, the attention
    query/value projections in fixed-epoch runs (GPT-2, GPT-NeoX: their own names)."""
    if target_mode:
        return list(MLP_TARGETS.get(model_type or "", ["gate_proj", "up_proj", "down_proj"]))
    return list(LORA_TARGETS.get(model_type or "", ["q_proj", "v_proj"]))


def documents_sha256(docs: Sequence[dict]) -> str:
    """SHA-256 of a corpus's (id, text) pairs in order: what training.json records to tell which data trained it."""
    h = hashlib.sha256()
    for k, d in enumerate(docs):
        h.update(json.dumps([str(d.get("id", k)), d["text"]], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def lora_config(model_type: str, r: int = 8, alpha: int = 32, target_modules: Sequence[str] | None = None):
    """peft LoraConfig: r=8, α=32 on the attention query/value projections (GPT-2: the fused c_attn)."""
    from peft import LoraConfig

    targets = list(target_modules) if target_modules else default_targets(model_type, target_mode=False)
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                      fan_in_fan_out=model_type == "gpt2", task_type="CAUSAL_LM")


DEFAULT_EPOCH_CAP = 1000  # runs to a recall target: the most epochs before giving up


def _check_targets(model, targets: Sequence[str] | None) -> None:
    """Refuse LoRA target modules the model does not have, listing the ones it has (peft's error names neither)."""
    if not targets:
        return
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if n and isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"} - {""})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise AttrilensError(f"The base model has no module {', '.join(map(repr, missing))} to adapt. Its linear "
                             f"modules: {', '.join(linear)}. Pass --lora-targets from those.")


def _probe(tok, docs: Sequence[dict], facts: Path | str | None, seq_len: int, eval_facts: int, seed: int):
    """The recall probe (facts file, or the documents' own continuations) and its fixed seeded sample."""
    from attrilens.workflows.probes import make_probe

    probe, sample = make_probe(tok, [str(d.get("id", k)) for k, d in enumerate(docs)], [d["text"] for d in docs],
                               facts, seq_len, eval_facts, f"attrilens-lora/{seed}")
    if not len(probe):
        raise AttrilensError("No document of the corpus has two words to continue, so there is nothing to measure "
                             "recall on. Pass --facts FILE, or --target-recall 0 for fixed epochs.")
    return probe, sample


def _step_lr(lr: float, step: int, total: int | None, warmup: int) -> float:
    """Fixed epochs (``total`` steps): cosine from lr to 0, as before. To a target (``total`` None): linear warmup
    over ``warmup`` steps, then constant until the target, the budget or the cap ends the run."""
    if total is not None:
        return lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(1, total)))
    return lr * min(1.0, step / max(1, warmup))


def finetune_lora(base_dir: Path | str, corpus: Path | str | Sequence[dict], out: Path | str, *, r: int = 8,
                  alpha: int = 32, target_modules: Sequence[str] | None = None, epochs: int | None = None,
                  lr: float | None = None, batch_size: int = 8, seq_len: int = 256, seed: int = 0, keep_checkpoints: int = 2,
                  max_steps: int | None = None, weight_decay: float = 0.0, progress: bool = True,
                  capture: GradientCapture | None = None, stop_after: int | None = None,
                  resume_every: int = 20, target_recall: float | None = None, max_minutes: float | None = None,
                  facts: Path | str | None = None, eval_every: int | None = None, eval_facts: int = 200,
                  warmup_steps: int = 10, text_field: str = "text",
                  id_field: str = "id") -> Path:
    """LoRA-fine-tune the model in `base_dir` on a corpus with AdamW; save adapter, optimizer state, checkpoints.
    With `capture`, also write index features of every document of every step from the training's own backward
    (rows named by document id; a row's step is the number of updates before it, as `checkpoints/step-s` counts).

    Two ways to decide how long: ``epochs`` passes with a cosine decay (``target_recall=None``: default 1 epoch), or
    until the greedy recall of what it is given — the ``facts`` file's ``{"prompt", "target"}`` rows, else each
    document's own continuation (`demo.probes`) — reaches ``target_recall``, measured every ``eval_every`` steps on
    a fixed sample of ``eval_facts``, at a constant rate after ``warmup_steps``, within ``max_minutes`` of
    training (over resumptions) and ``epochs`` (a cap, default 1000). training.json's ``stop_reason`` says which
    ended it ("target reached", "time budget…", "epochs cap"), and says so when the budget learnt nothing.
    Unset ``lr`` and ``target_modules`` depend on the mode: to a target 2e-3 on the MLP projections (where a chat
    model's answers can reach what it learnt), fixed epochs 1e-3 on the attention query/value projections.

    Resumable: every `resume_every` steps (and at each checkpoint) the adapter, the optimizer state and the step go
    atomically into `out/resume.safetensors`; calling again with the same base, corpus and settings continues from
    there (the data order is a function of the seed, so the result equals an uninterrupted run), and a finished run
    is returned as it is. `stop_after` stops cleanly after that many steps in total (resumable; tests, budgets)."""
    from peft import get_peft_model
    from safetensors.torch import save_file
    from tqdm import tqdm

    from attrilens.workflows.stopping import budget_reason, checkpoint_unknown_length, thin_checkpoints

    target_mode = target_recall is not None
    if epochs is None:
        epochs = DEFAULT_EPOCH_CAP if target_mode else 1
    if lr is None:
        lr = TARGET_MODE_LR if target_mode else FIXED_EPOCHS_LR
    if r < 1 or alpha <= 0 or epochs < 1 or batch_size < 1 or lr <= 0:
        raise AttrilensError("r, alpha, epochs, batch_size and lr must be positive. Fix the arguments.")
    if target_mode and not 0 < target_recall <= 1:
        raise AttrilensError(f"target_recall must be in (0, 1], got {target_recall}. Pass e.g. 0.9 (or 0 / none "
                             "for fixed epochs).")
    if max_minutes is not None and not max_minutes >= 0:
        raise AttrilensError(f"max_minutes must be >= 0, got {max_minutes}. Pass a number of minutes.")
    if facts is not None and not Path(facts).is_file():
        raise AttrilensError(f"Facts file not found: {facts}. Pass a JSONL of {{\"prompt\", \"target\"}} rows.")
    from attrilens.models import MODELS, resolve_model

    # a registered name (e.g. smollm2-135m-instruct) is recorded as the name, so the adapter loads on any machine
    base_name = base_dir if isinstance(base_dir, str) and base_dir in MODELS else None
    base_dir, out = resolve_model(base_dir), Path(out)
    docs = (read_documents(Path(corpus), text_field=text_field, id_field=id_field)  # any corpus_formats format
            if isinstance(corpus, (str, Path)) else list(corpus))
    settings = {"base": base_name or str(base_dir.resolve()), "corpus": documents_sha256(docs), "r": r, "alpha": alpha,
                "target_modules": sorted(target_modules) if target_modules else None, "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "keep_checkpoints": keep_checkpoints,
                "max_steps": max_steps, "weight_decay": weight_decay}
    if target_mode:  # fixed-epoch runs keep the settings they always had (finished runs are recognised)
        settings.update({"target_recall": target_recall, "facts": None if facts is None else str(Path(facts).resolve()),
                         "eval_every": eval_every, "eval_facts": eval_facts, "warmup_steps": warmup_steps})
    resume_path = out / "resume.safetensors"
    if (out / "training.json").is_file() and not resume_path.is_file():
        done = json.loads((out / "training.json").read_text())
        if done.get("finished") and done.get("settings") == settings and capture is None:
            return out  # this very run is finished
    base = LM.from_pretrained(base_dir)
    model, tok = base.model, base.tokenizer
    if target_modules is None and target_mode:
        target_modules = default_targets(model.config.model_type)
    _check_targets(model, target_modules)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for our users to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config(model.config.model_type, r, alpha, target_modules))
    inner = peft_model.base_model.model
    named = {n: p for n, p in inner.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(named.values()), lr=lr, weight_decay=weight_decay, foreach=False)
    eos = tok.eos_token_id
    enc = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
    seqs = [(list(e) + ([eos] if eos is not None else []))[:seq_len] for e in enc]
    probe, sample = _probe(tok, docs, facts, seq_len, eval_facts, seed) if target_mode else (None, [])
    order = _Order(len(seqs), batch_size, seed, epochs, max_steps)
    total = None if target_mode else order.total()
    order.has(0)
    epoch_steps = len(order.batches)
    if target_mode and eval_every is None:  # once an epoch, at most 50 steps; rarer if it would cost > ~5 %
        from attrilens.workflows.probes import default_eval_every

        eval_every = default_eval_every(probe, sample, epoch_steps, sum(len(s) for s in seqs))
    ckpt_every = max(1, math.ceil(total / (keep_checkpoints + 1))) if keep_checkpoints and total else 0
    out.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "settings": settings, "checkpoints": [], "losses": [], "recall": [], "train_seconds": 0.0}
    if resume_path.is_file():
        saved = load_resume(resume_path, inner, opt)
        if saved.get("settings") != settings:
            raise AttrilensError(f"{resume_path} belongs to a fine-tuning run with other settings or data. Delete "
                                 "it to start over, or pass another output directory.")
        state.update(saved)
    first = state["step"]
    checkpoints, losses = state["checkpoints"], state["losses"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    if capture is not None:
        capture.attach(peft_model, tok, block_len=seq_len, first_step=first, name=str(out), optimizer=opt)
    if target_mode and "initial_recall" not in state:
        state["initial_recall"] = round(probe.recall(peft_model, sample), 4)  # the base model's, the baseline
    peft_model.train()
    bar = tqdm(total=total, initial=first, desc="lora", file=sys.stderr, disable=not progress, unit="step")
    step_lr, step, reason = lr, first, None
    budget = None if max_minutes is None else max_minutes * 60
    while True:
        if not order.has(step):
            reason = "epochs cap"
            break
        if budget is not None and state["train_seconds"] + time.perf_counter() - t0 >= budget:
            reason = "time budget"
            break
        if stop_after is not None and step >= stop_after:
            bar.close()
            return out
        batch = order.batches[step]
        step += 1
        ids, mask, labels = collate([[i] for i in batch], seqs, pad)  # a row is one document
        step_lr = _step_lr(lr, step, total, warmup_steps)
        for group in opt.param_groups:
            group["lr"] = step_lr
        if capture is not None:
            capture.begin_step(step - 1, step_lr, [str(docs[i].get("id", i)) for i in batch])
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append([step, round(loss.item(), 5)])
        state["step"] = step
        bar.update(1)
        if target_mode and step % eval_every == 0:
            recall = probe.recall(peft_model, sample)
            state["recall"].append({"step": step, "epoch": round(step / epoch_steps, 3), "recall": round(recall, 4),
                                    "seconds": round(state["train_seconds"] + time.perf_counter() - t0, 1)})
            bar.set_postfix({"loss": f"{loss.item():.3f}", "recall": f"{recall:.2f}"}, refresh=False)
            if recall >= target_recall:
                reason = "target reached"
        checkpoint = False
        if target_mode:
            n_before = len(checkpoints)
            checkpoint_unknown_length(peft_model, out, state, step, step_lr, eval_every, keep_checkpoints)
            checkpoint = len(checkpoints) != n_before
        elif ckpt_every and step % ckpt_every == 0 and step < total:
            checkpoint = True
            rel = f"checkpoints/step-{step}"
            peft_model.save_pretrained(out / rel)
            checkpoints.append({"step": step, "lr": step_lr, "path": rel})
        if reason is not None:
            break
        if order.has(step) and (checkpoint or step % resume_every == 0 or step == stop_after):
            save_resume(resume_path, inner, opt, {**state, "train_seconds": state["train_seconds"]
                                                  + time.perf_counter() - t0})
    bar.close()
    state["train_seconds"] += time.perf_counter() - t0
    if target_mode:
        thin_checkpoints(out, state, step, keep_checkpoints)
        checkpoints = state["checkpoints"]
    else:
        reason = "epochs cap"
    total_steps = step
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    sq = {f"exp_avg_sq.{n}": opt.state[p]["exp_avg_sq"].contiguous() for n, p in named.items() if p in opt.state}
    save_file(sq, str(out / "optimizer.safetensors"), metadata={"format": "attrilens/adamw-exp_avg_sq/v1"})
    if capture is not None:
        capture.close(model_dir=out)
    wall = state["train_seconds"]
    info = {"schema": "attrilens/lora/v1", "base": settings["base"], "finished": True,
            "config": {"r": r, "alpha": alpha, "target_modules": list(peft_model.peft_config["default"].target_modules),
                       "epochs": epochs, "lr": lr, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
                       "weight_decay": weight_decay},
            "optimizer": {"name": "AdamW", "step": total_steps, "lr": lr, "final_lr": step_lr if total_steps else lr,
                          "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": weight_decay,
                          "schedule": "linear warmup, then constant until the recall target" if target_mode
                          else "cosine from lr to 0 over the epochs",
                          "file": "optimizer.safetensors", "keys": "exp_avg_sq.<parameter name>"},
            "stop_reason": reason, "epochs_run": round(total_steps / epoch_steps, 3),
            "checkpoints": checkpoints, "loss_curve": losses, "n_documents": len(docs), "settings": settings,
            "corpus": {"path": str(Path(corpus).resolve()) if isinstance(corpus, (str, Path)) else None,
                       "sha256": documents_sha256(docs), "text_field": text_field, "id_field": id_field},
            "wall_seconds": round(wall, 2), "resumed_at_step": first,
            "seconds_per_epoch": round(wall / max(1e-9, total_steps / epoch_steps), 1) if total_steps else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # of this process
    if target_mode:
        final = probe.recall(peft_model)
        key = "fact_recall" if facts is not None else "continuation_recall"
        info[key] = {"target": target_recall, "eval_every": eval_every, "sample": len(sample),
                     "n_facts": len(probe), "n_rows": len(probe.pairs), "initial": state["initial_recall"],
                     "curve": state["recall"], "final": round(final, 4),
                     "description": CONTINUATION_DESCRIPTION if facts is None else (
                         "greedy exact match of each fact's prompt -> target; the curve on a fixed seeded sample "
                         "every eval_every steps, `final` on all facts at the end")}
        info["max_minutes"] = max_minutes
        if reason == "time budget":
            info["stop_reason"] = budget_reason(state["initial_recall"], final, target_recall, state["recall"])
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, out / "training.json")
    resume_path.unlink(missing_ok=True)
    if progress and target_mode:
        rec = info.get("fact_recall") or info["continuation_recall"]
        print(f"stopped: {info['stop_reason']} after {info['epochs_run']:g} epochs, {wall:.0f} s; recall "
              f"{rec['initial']:.2f} -> {rec['final']:.3f} of {rec['n_facts']}", file=sys.stderr)
    return out


class _Order:
    """The data order: one seeded permutation an epoch, cut into batches of documents, drawn lazily (a run, its
    resumption and a fixed-epoch run of the same seed see the same batches), up to ``epochs`` or ``max_steps``.
    (Packing several documents into a row, as the scratch trainer does, was tried for LoRA on a towns corpus: the
    chat answers got worse, 4 of 45 right against 16, so a row is one document.)"""

    def __init__(self, n: int, batch_size: int, seed: int, epochs: int, max_steps: int | None):
        self.n, self.batch_size, self.epochs, self.max_steps = n, batch_size, epochs, max_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.batches: list[list[int]] = []
        self.drawn = 0

    def has(self, step: int) -> bool:
        """Whether the run has a step ``step`` (0-based), drawing epochs as needed."""
        if self.max_steps is not None and step >= self.max_steps:
            return False
        while step >= len(self.batches) and self.drawn < self.epochs:
            perm = torch.randperm(self.n, generator=self.generator).tolist()
            self.batches += [perm[b : b + self.batch_size] for b in range(0, len(perm), self.batch_size)]
            self.drawn += 1
        return step < len(self.batches)

    def total(self) -> int:
        """Steps of the whole fixed-epoch run."""
        while self.drawn < self.epochs and (self.max_steps is None or len(self.batches) < self.max_steps):
            self.has(len(self.batches))
        return len(self.batches) if self.max_steps is None else min(self.max_steps, len(self.batches))
