"""A tiny causal-LM trainer (CPU friendly) that saves standard Hugging Face directories.

``train(TrainConfig(corpus=..., out=...))`` trains a byte-level BPE tokenizer (or reuses ``tokenizer=DIR``),
builds a GPT-2 or Llama model from a config, trains it with AdamW on whole documents (each ending with eos,
packed whole into rows of at most ``seq_len`` tokens, loss masked on padding) and writes into ``out``:

- the model (``save_pretrained``, safetensors) and the tokenizer: load with ``AutoModelForCausalLM`` /
  ``AutoTokenizer``;
- ``optimizer.safetensors``: the final AdamW second moments, keyed ``exp_avg_sq.<parameter name>``
  (hyper-parameters and the step count are in ``training.json["optimizer"]``);
- ``checkpoints/step-N/``: a few intermediate checkpoints (HF dirs) with their learning rates in
  ``training.json["checkpoints"]`` (for TracIn);
- ``training.json``: config, data order (document ids and the per-epoch permutation), loss curve, wall time,
  tokens/s;
- ``resume.safetensors`` while unfinished: model + optimizer + step, written atomically; running the same
  config again continues from it. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Fields that may change between an interrupted run and its resumption.
_RESUME_FREE = {"out", "max_minutes", "max_steps", "schedule_minutes", "progress", "threads", "resume_every_minutes",
                "resume_every_steps"}


@dataclass
class TrainConfig:
    """Every knob of a training run; saved into ``training.json``."""

    corpus: Path
    out: Path
    arch: Literal["gpt2", "llama"] = "llama"
    layers: int = 4
    width: int = 128
    heads: int = 4
    intermediate: int | None = None  # MLP width; default 4*width (gpt2) or 8/3*width rounded (llama)
    epochs: int = 100  # with batch 4 and lr 1e-2: a 480-fact corpus in minutes (docs/benchmarks.md)
    max_minutes: float | None = None  # stop cleanly (resumable) after this much training time in this call
    max_steps: int | None = None  # stop cleanly (resumable) once this many optimizer steps are done in total
    # Time-budgeted schedule: the cosine decay runs over max(step/total, minutes trained/schedule_minutes) and
    # training ends (finished) when that reaches 1, so a busy machine still gets a fully decayed model.
    schedule_minutes: float | None = None
    seed: int = 0
    tokenizer: Path | None = None  # reuse this tokenizer dir (e.g. for a proxy model) instead of training one
    init_from: Path | None = None  # start from this HF model dir (continued training; needs ``tokenizer``)
    vocab_size: int = 2048
    seq_len: int = 512
    batch_size: int = 4
    lr: float = 1e-2
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    grad_clip: float = 1.0
    curriculum_epochs: int = 0  # the first N epochs use only documents of at most curriculum_max_tokens
    curriculum_max_tokens: int = 256
    keep_checkpoints: int = 3
    resume_every_minutes: float = 5.0
    resume_every_steps: int | None = None
    threads: int | None = 2
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes saved with the config

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("corpus", "out", "tokenizer", "init_from"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def _check(config: TrainConfig) -> None:
    if config.arch not in ("gpt2", "llama"):
        raise AttrilensError(f"Unknown arch {config.arch!r}. Use 'gpt2' or 'llama'.")
    for name in ("layers", "width", "heads", "epochs", "seq_len", "batch_size"):
        if getattr(config, name) < 1:
            raise AttrilensError(f"{name} must be positive, got {getattr(config, name)}. Pass a value >= 1.")
    if config.width % config.heads:
        raise AttrilensError(f"width {config.width} is not divisible by heads {config.heads}. Change one of them.")
    if config.vocab_size < 300:
        raise AttrilensError(f"vocab_size {config.vocab_size} is too small for byte-level BPE. Use >= 300.")
    if config.lr <= 0:
        raise AttrilensError(f"lr must be positive, got {config.lr}. Pass a positive learning rate.")
    if config.init_from is not None and (config.tokenizer is None or not (Path(config.init_from) / "config.json").is_file()):
        raise AttrilensError(f"init_from={config.init_from} needs a model dir (config.json) and tokenizer=DIR. "
                             "Pass both.")
    if config.tokenizer is not None and not (Path(config.tokenizer) / "tokenizer.json").is_file():
        raise AttrilensError(f"No tokenizer.json in {config.tokenizer}. Pass a directory written by `train`.")


def train_tokenizer(texts: list[str], vocab_size: int, out: Path, seq_len: int = 512):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer in ``out``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                  unk_token=EOS, pad_token=PAD, model_max_length=seq_len)
    tok.save_pretrained(out)
    return tok


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def build_model(config: TrainConfig, tok):
    """A freshly initialised GPT-2 or Llama model sized by ``config`` for tokenizer ``tok``."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(config.seed)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vocab = len(tok)
    if config.arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=config.seq_len, n_embd=config.width, n_layer=config.layers,
                         n_head=config.heads, n_inner=config.intermediate, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, tie_word_embeddings=True, **ids)
    else:
        inter = config.intermediate or int(math.ceil(config.width * 8 / 3 / 32) * 32)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=config.width, intermediate_size=inter,
                          num_hidden_layers=config.layers, num_attention_heads=config.heads,
                          num_key_value_heads=config.heads, max_position_embeddings=config.seq_len,
                          tie_word_embeddings=True, attention_dropout=0.0, **ids)
    return AutoModelForCausalLM.from_config(cfg)


def _epoch_rows(lengths: list[int], order: list[int], seq_len: int) -> list[list[int]]:
    """Pack whole documents (in ``order``) into rows of at most ``seq_len`` tokens, next-fit."""
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and used + lengths[i] > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        rows.append(cur)
    return rows


def _plan(config: TrainConfig, lengths: list[int]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Per-epoch document permutations and the batches (lists of rows of document indices) of the whole run."""
    orders, batches = [], []
    for epoch in range(config.epochs):
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(lengths), generator=g).tolist()
        if epoch < config.curriculum_epochs:
            perm = [i for i in perm if lengths[i] <= config.curriculum_max_tokens] or perm
        orders.append(perm)
        rows = _epoch_rows(lengths, perm, config.seq_len)
        batches += [rows[b : b + config.batch_size] for b in range(0, len(rows), config.batch_size)]
    return orders, batches


def _collate(rows: list[list[int]], docs: list[list[int]], pad_id: int):
    seqs = [[t for i in row for t in docs[i]] for row in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _lr_at(config: TrainConfig, step: int, total: int, frac: float | None = None) -> float:
    """Linear warmup, then cosine from lr to lr*min_lr_ratio over the run's progress ``frac`` (default step/total)."""
    warm = min(config.warmup_steps, max(1, total // 10))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm) if frac is None else frac
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cos)


def _named_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_resume(path: Path, model, opt, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, p in _named_params(model).items():
        tensors[f"model.{name}"] = p.detach().contiguous()
        st = opt.state.get(p)
        if st:
            tensors[f"exp_avg.{name}"] = st["exp_avg"].contiguous()
            tensors[f"exp_avg_sq.{name}"] = st["exp_avg_sq"].contiguous()
            tensors[f"step.{name}"] = torch.as_tensor(st["step"]).reshape(1).clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    os.replace(tmp, path)


def _load_resume(path: Path, model, opt) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        keys = set(f.keys())
        with torch.no_grad():
            for name, p in _named_params(model).items():
                p.copy_(f.get_tensor(f"model.{name}"))
                if f"exp_avg.{name}" in keys:
                    opt.state[p] = {"step": f.get_tensor(f"step.{name}").reshape(()),
                                    "exp_avg": f.get_tensor(f"exp_avg.{name}"),
                                    "exp_avg_sq": f.get_tensor(f"exp_avg_sq.{name}")}
    return state


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _RESUME_FREE and v is not None}  # None = unset/older field


def train(config: TrainConfig, capture: GradientCapture | None = None) -> Path:
    """Train (or resume, or return an already finished run) and return the output directory; with `capture`, also
    write index features of every training row of every step from the training's own backward pass
    (`attrilens.training.capture`: row names are the packed documents' ids joined by "+", a row's step is the
    number of updates before it, so rows of step s equal a post-hoc build at checkpoints/step-s)."""
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    _check(config)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars for every checkpoint
    out = Path(config.out)
    rows = load_jsonl(Path(config.corpus))
    for r in rows:
        if not r["text"].strip():
            raise AttrilensError(f'Document {r.get("id")!r} in {config.corpus} has an empty "text". '
                                 "Remove it or give it text.")
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    texts = [r["text"] for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    info_path, resume_path = out / "training.json", out / "resume.safetensors"
    if info_path.is_file() and not resume_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("finished") and _comparable(info["config"]) == _comparable(config.to_dict()):
            if capture is not None:
                raise AttrilensError(f"{out} already holds this finished training run: there is no training left to "
                                     "capture. Pass another --out (or delete it) to train and capture again.")
            return out
    if config.threads:
        torch.set_num_threads(config.threads)

    if config.tokenizer is not None:
        tok = load_tokenizer(Path(config.tokenizer))
        if Path(config.tokenizer).resolve() != out.resolve():
            tok.save_pretrained(out)
    elif (out / "tokenizer.json").is_file() and resume_path.is_file():
        tok = load_tokenizer(out)  # resuming: keep the tokenizer the interrupted run trained
    else:
        tok = train_tokenizer(texts, config.vocab_size, out, config.seq_len)
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise AttrilensError(f"Tokenizer {config.tokenizer} has no eos or pad token. Use one written by `train`.")
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    docs = [(e + [tok.eos_token_id])[: config.seq_len] for e in enc]
    truncated = sum(len(e) + 1 > config.seq_len for e in enc)
    lengths = [len(d) for d in docs]
    orders, batches = _plan(config, lengths)
    total = len(batches)

    if config.init_from is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(config.init_from), dtype=torch.float32)
        if model.config.vocab_size != len(tok):
            raise AttrilensError(f"init_from model has vocab {model.config.vocab_size}, tokenizer {len(tok)}. "
                                 "Pass the tokenizer the model was trained with.")
    else:
        model = build_model(config, tok)
    model.train()
    params = _named_params(model)
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, foreach=False)
    state = {"step": 0, "losses": [], "tokens": 0, "train_seconds": 0.0, "checkpoints": [],
             "config": config.to_dict()}
    if resume_path.is_file():
        saved = _load_resume(resume_path, model, opt)
        if _comparable(saved["config"]) != _comparable(config.to_dict()):
            raise AttrilensError(f"{resume_path} belongs to a run with a different config. "
                                 "Delete it to start over, or use another --out.")
        state = saved
        state["config"] = config.to_dict()

    if capture is not None:
        capture.attach(model, tok, block_len=config.seq_len, first_step=state["step"], name=str(out))
    log_every = max(1, total // 1000)
    n_ck = config.keep_checkpoints
    start = time.monotonic()
    last_resume = start
    stop_reason = None
    step = state["step"]
    window: list[float] = []
    bar = tqdm(total=total, initial=step, desc=f"train {config.arch}", file=sys.stderr,
               disable=not config.progress, mininterval=2.0, dynamic_ncols=True)
    while step < total:
        if config.max_steps is not None and step >= config.max_steps:
            stop_reason = "max_steps"
            break
        if config.max_minutes is not None and time.monotonic() - start >= config.max_minutes * 60:
            stop_reason = "max_minutes"
            break
        frac = None
        if config.schedule_minutes is not None:
            elapsed = state["train_seconds"] + time.monotonic() - start
            frac = max(step / total, elapsed / (config.schedule_minutes * 60))
            if frac >= 1:
                break
        lr = _lr_at(config, step, total, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        input_ids, mask, labels = _collate(batches[step], docs, tok.pad_token_id)
        if capture is not None:
            capture.begin_step(step, lr, ["+".join(ids[i] for i in row) for row in batches[step]])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        state["step"] = step
        state["tokens"] += int(mask.sum())
        window.append(loss.item())
        if len(window) == log_every or step == total:
            state["losses"].append([step, round(sum(window) / len(window), 5)])
            window = []
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1] if window else loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
        k = len(state["checkpoints"]) + 1
        if n_ck and k <= n_ck and (frac if frac is not None else step / total) >= k / (n_ck + 1) and step < total:
            ck = out / "checkpoints" / f"step-{step}"
            model.save_pretrained(ck)
            state["checkpoints"].append({"step": step, "lr": lr, "path": f"checkpoints/step-{step}"})
        now = time.monotonic()
        due = (config.resume_every_steps and step % config.resume_every_steps == 0) or (
            now - last_resume >= config.resume_every_minutes * 60)
        if due and step < total:
            state["train_seconds"] += now - start
            start = last_resume = now
            if capture is not None:
                capture.flush()  # the rows of every step the resume state covers are on disk
            _save_resume(resume_path, model, opt, state)
    bar.close()
    state["train_seconds"] += time.monotonic() - start
    finished = step >= total or (stop_reason is None and config.schedule_minutes is not None)

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
    if finished:
        resume_path.unlink(missing_ok=True)
    else:
        _save_resume(resume_path, model, opt, state)
    n_params = sum(p.numel() for p in params.values())
    info = {
        "schema": "attrilens/training/v1",
        "finished": finished,
        "stopped": stop_reason,
        "config": config.to_dict(),
        "arch": config.arch,
        "n_parameters": n_params,
        "n_documents": len(docs),
        "truncated_documents": truncated,
        "total_steps": total,
        "step": step,
        "tokens": state["tokens"],
        "wall_seconds": round(state["train_seconds"], 2),
        "tokens_per_second": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
        "optimizer": {"name": "AdamW", "step": step, "lr": config.lr, "final_lr": _lr_at(config, max(0, step - 1), total),
                      "betas": [config.beta1, config.beta2], "eps": config.eps,
                      "weight_decay": config.weight_decay, "schedule": "linear warmup + cosine to min_lr_ratio",
                      "file": "optimizer.safetensors", "keys": "exp_avg_sq.<parameter name>"},
        "checkpoints": state["checkpoints"],
        "loss_curve": state["losses"],
        "data_order": {
            "description": "each epoch: documents in permutation order, packed whole (next-fit) into rows of "
                           "<= seq_len tokens, batch_size rows per step",
            "document_ids": ids,
            "epoch_permutations": orders,
        },
    }
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, info_path)
    return out
