"""LoRA fine-tuning of a trained model with peft (the model DataInf attributes); `LM.from_pretrained(out)` loads it back.

`finetune_lora(base_dir, corpus, out)` writes into `out`: the adapter (`adapter_config.json`,
`adapter_model.safetensors`), the tokenizer, `optimizer.safetensors` (final AdamW `exp_avg_sq.<parameter
name>` of the LoRA matrices, names as in the adapted model), `checkpoints/step-N/` (adapters) and
`training.json` (base directory, config, learning rates of the checkpoints, loss curve).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.corpus import read_documents

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture

LORA_TARGETS = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}  # everything else: q_proj, v_proj


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
                  capture: GradientCapture | None = None) -> Path:
    """LoRA-fine-tune the model in `base_dir` on a corpus with AdamW; save adapter, optimizer state, checkpoints.
    With `capture`, also write index features of every document of every step from the training's own backward
    (rows named by document id; a row's step is the number of updates before it, as `checkpoints/step-s` counts)."""
    from peft import get_peft_model
    from safetensors.torch import save_file
    from tqdm import tqdm

    if r < 1 or alpha <= 0 or epochs < 1 or batch_size < 1 or lr <= 0:
        raise AttrilensError("r, alpha, epochs, batch_size and lr must be positive. Fix the arguments.")
    base_dir, out = Path(base_dir), Path(out)
    docs = read_documents(Path(corpus)) if isinstance(corpus, (str, Path)) else list(corpus)
    base = LM.from_pretrained(base_dir)
    model, tok = base.model, base.tokenizer
    torch.manual_seed(seed)
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
    checkpoints, losses = [], []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    if capture is not None:
        capture.attach(peft_model, tok, block_len=seq_len, name=str(out))
    peft_model.train()
    for step, batch in enumerate(tqdm(batches, desc="lora", file=sys.stderr, disable=not progress), 1):
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
        if ckpt_every and step % ckpt_every == 0 and step < total:
            rel = f"checkpoints/step-{step}"
            peft_model.save_pretrained(out / rel)
            checkpoints.append({"step": step, "lr": step_lr, "path": rel})
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    sq = {f"exp_avg_sq.{n}": opt.state[p]["exp_avg_sq"].contiguous() for n, p in named.items() if p in opt.state}
    save_file(sq, str(out / "optimizer.safetensors"), metadata={"format": "attrilens/adamw-exp_avg_sq/v1"})
    if capture is not None:
        capture.close(model_dir=out)
    info = {"schema": "attrilens/lora/v1", "base": str(base_dir.resolve()), "finished": True,
            "config": {"r": r, "alpha": alpha, "target_modules": list(peft_model.peft_config["default"].target_modules),
                       "epochs": epochs, "lr": lr, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
                       "weight_decay": weight_decay},
            "optimizer": {"name": "AdamW", "step": total, "lr": lr, "final_lr": step_lr if total else lr,
                          "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": weight_decay,
                          "file": "optimizer.safetensors", "keys": "exp_avg_sq.<parameter name>"},
            "checkpoints": checkpoints, "loss_curve": losses, "n_documents": len(docs),
            "wall_seconds": round(time.perf_counter() - t0, 2)}
    tmp = out / "training.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, out / "training.json")
    return out
