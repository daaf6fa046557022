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

from attrilens.demo.resume import load_resume, save_resume
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.corpus import read_documents

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture

LORA_TARGETS = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}  # everything else: q_proj, v_proj


def documents_sha256(docs: Sequence[dict]) -> str:
    """SHA-256 of a corpus's (id, text) pairs in order: what training.json records to tell which data trained it."""
    h = hashlib.sha256()
    for k, d in enumerate(docs):
        h.update(json.dumps([str(d.get("id", k)), d["text"]], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def lora_config(model_type: str, r: int = 8, alpha: int = 32, target_modules: Sequence[str] | None = None):
    """peft LoraConfig: r=8, α=32 on the attention query/value projections (GPT-2: the fused c_attn)."""
    from peft import LoraConfig

    targets = list(target_modules) if target_modules else LORA_TARGETS.get(model_type, ["q_proj", "v_proj"])
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                      fan_in_fan_out=model_type == "gpt2", task_type="CAUSAL_LM")


def finetune_lora(base_dir: Path | str, corpus: Path | str | Sequence[dict], out: Path | str, *, r: int = 8,
                  alpha: int = 32, target_modules: Sequence[str] | None = None, epochs: int = 1, lr: float = 1e-3,
                  batch_size: int = 8, seq_len: int = 256, seed: int = 0, keep_checkpoints: int = 2,
                  max_steps: int | None = None, weight_decay: float = 0.0, progress: bool = True,
                  capture: GradientCapture | None = None, stop_after: int | None = None,
                  resume_every: int = 20) -> Path:
    """LoRA-fine-tune the model in `base_dir` on a corpus with AdamW; save adapter, optimizer state, checkpoints.
    With `capture`, also write index features of every document of every step from the training's own backward
    (rows named by document id; a row's step is the number of updates before it, as `checkpoints/step-s` counts).

    Resumable: every `resume_every` steps (and at each checkpoint) the adapter, the optimizer state and the step go
    atomically into `out/resume.safetensors`; calling again with the same base, corpus and settings continues from
    there (the data order is a function of the seed, so the result equals an uninterrupted run), and a finished run
    is returned as it is. `stop_after` stops cleanly after that many steps in total (resumable; tests, budgets)."""
    from peft import get_peft_model
    from safetensors.torch import save_file
    from tqdm import tqdm

    if r < 1 or alpha <= 0 or epochs < 1 or batch_size < 1 or lr <= 0:
        raise AttrilensError("r, alpha, epochs, batch_size and lr must be positive. Fix the arguments.")
    from attrilens.models import MODELS, resolve_model

    # a registered name (e.g. smollm2-135m-instruct) is recorded as the name, so the adapter loads on any machine
    base_name = base_dir if isinstance(base_dir, str) and base_dir in MODELS else None
    base_dir, out = resolve_model(base_dir), Path(out)
    docs = read_documents(Path(corpus)) if isinstance(corpus, (str, Path)) else list(corpus)
    settings = {"base": base_name or str(base_dir.resolve()), "corpus": documents_sha256(docs), "r": r, "alpha": alpha,
                "target_modules": sorted(target_modules) if target_modules else None, "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "keep_checkpoints": keep_checkpoints,
                "max_steps": max_steps, "weight_decay": weight_decay}
    resume_path = out / "resume.safetensors"
    if (out / "training.json").is_file() and not resume_path.is_file():
        done = json.loads((out / "training.json").read_text())
        if done.get("finished") and done.get("settings") == settings and capture is None:
            return out  # this very run is finished
    base = LM.from_pretrained(base_dir)
    model, tok = base.model, base.tokenizer
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
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(len(seqs), generator=g).tolist()
        batches += [perm[b : b + batch_size] for b in range(0, len(perm), batch_size)]
    if max_steps is not None:
        batches = batches[:max_steps]
    total = len(batches)
    ckpt_every = max(1, math.ceil(total / (keep_checkpoints + 1))) if keep_checkpoints else 0
    out.mkdir(parents=True, exist_ok=True)
    checkpoints, losses, first = [], [], 0
    if resume_path.is_file():
        saved = load_resume(resume_path, inner, opt)
        if saved.get("settings") != settings:
            raise AttrilensError(f"{resume_path} belongs to a fine-tuning run with other settings or data. Delete "
                                 "it to start over, or pass another output directory.")
        first, checkpoints, losses = saved["step"], saved["checkpoints"], saved["losses"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    if capture is not None:
        capture.attach(peft_model, tok, block_len=seq_len, first_step=first, name=str(out), optimizer=opt)
    peft_model.train()
    bar = tqdm(total=total, initial=first, desc="lora", file=sys.stderr, disable=not progress)
    step_lr = lr
    for step, batch in enumerate(batches[first:], first + 1):
        if stop_after is not None and step > stop_after:
            bar.close()
            return out
        rows = [seqs[i] for i in batch]
        width = max(len(s) for s in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, s in enumerate(rows):
            ids[k, : len(s)] = torch.as_tensor(s)
            mask[k, : len(s)] = 1
        step_lr = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(1, total)))
        for group in opt.param_groups:
            group["lr"] = step_lr
        if capture is not None:
            capture.begin_step(step - 1, step_lr, [str(docs[i].get("id", i)) for i in batch])
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append([step, round(loss.item(), 5)])
        bar.update(1)
        checkpoint = bool(ckpt_every and step % ckpt_every == 0 and step < total)
        if checkpoint:
            rel = f"checkpoints/step-{step}"
            peft_model.save_pretrained(out / rel)
            checkpoints.append({"step": step, "lr": step_lr, "path": rel})
        if step < total and (checkpoint or step % resume_every == 0 or step == stop_after):
            save_resume(resume_path, inner, opt, {"step": step, "settings": settings, "checkpoints": checkpoints,
                                                  "losses": losses})
    bar.close()
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    sq = {f"exp_avg_sq.{n}": opt.state[p]["exp_avg_sq"].contiguous() for n, p in named.items() if p in opt.state}
    save_file(sq, str(out / "optimizer.safetensors"), metadata={"format": "attrilens/adamw-exp_avg_sq/v1"})
    if capture is not None:
        capture.close(model_dir=out)
    info = {"schema": "attrilens/lora/v1", "base": settings["base"], "finished": True,
            "config": {"r": r, "alpha": alpha, "target_modules": list(peft_model.peft_config["default"].target_modules),
                       "epochs": epochs, "lr": lr, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
                       "weight_decay": weight_decay},
            "optimizer": {"name": "AdamW", "step": total, "lr": lr, "final_lr": step_lr if total else lr,
                          "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": weight_decay,
                          "file": "optimizer.safetensors", "keys": "exp_avg_sq.<parameter name>"},
            "checkpoints": checkpoints, "loss_curve": losses, "n_documents": len(docs), "settings": settings,
            "corpus": {"path": str(Path(corpus).resolve()) if isinstance(corpus, (str, Path)) else None,
                       "sha256": documents_sha256(docs)},
            "wall_seconds": round(time.perf_counter() - t0, 2), "resumed_at_step": first,
            "seconds_per_epoch": round((time.perf_counter() - t0) * total / max(1, total - first) / epochs, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # of this process
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, out / "training.json")
    resume_path.unlink(missing_ok=True)
    return out
