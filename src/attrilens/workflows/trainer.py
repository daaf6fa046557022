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
  tokens/s, why training stopped (``stop_reason``) and, with facts, the fact-recall curve and final recall;
- ``resume.safetensors`` while unfinished: model + optimizer + step, written atomically; running the same
  config again continues from it. Nothing is unpickled.

Two ways to decide how long to train:

- **a fixed number of epochs** (``target_recall=None``, the default of the Python API): ``epochs`` passes (100 if
  unset), linear warmup then a cosine decay over the whole run (or over ``schedule_minutes``);
- **until a memorisation target** (``target_recall=0.9``, the default of ``attrilens train``, 30-minute budget):
  train until the greedy recall of what the corpus is meant to teach reaches the target, the time budget
  ``max_minutes`` runs out, or ``epochs`` (a cap, 10,000 if unset) is reached — whichever comes first (``stop_reason``
  "target reached", "time budget …" saying why — nothing learnt, recall fell, or how far it got — "epochs cap").
  At the target (confirmed on the whole probe, not the sample) the rate decays linearly to ``lr * min_lr_ratio``
  over ``cooldown`` (25 %) of the steps so far, then the run stops; if that cooldown lost recall, the weights and
  optimizer state at the target are kept instead.

What is recalled (``attrilens.workflows.probes``): with facts, a JSONL file of ``{"prompt", "target"}`` rows (what
``make_world`` writes as ``facts.jsonl``; ``facts=`` or, by default, ``facts.jsonl`` in the corpus' directory), a
fact recalled when the greedy continuation of ``prompt`` is ``target`` and the word ends there (``greedy_match``).
Without facts — a user's corpus alone — the documents' own continuations: the last word of each of a document's
last four sentences, continued from that sentence's start, and its last word from the document's beginning
(``continuation_rows``), counted by document: a document is recalled when all of its points are (rows sharing
one prompt, such as a planted document and the true one, are recalled if any of their targets is). On a
521-document fact world (the tuning seed) the earlier count by sentence reached 0.91 while only 0.79 of the facts
were recalled: generic sentences are learnt first and hid the facts still missing. Every ``eval_every`` steps the
recall of a fixed seeded sample of at most ``eval_facts`` rows is measured (teacher-forced, one batched forward
pass, no generation loop) and recorded, beside the loss; the final recall is measured on all rows, and the
recall before training is recorded as the baseline.

The learning-rate schedule of the target mode is the one the shipped demo models were trained with
(``schedule_minutes``), over the run's budget, because the stop is not known in advance: linear warmup, then a
cosine decay from ``lr`` to ``lr * min_lr_ratio`` over the run's progress ``max(steps / cap steps, training
minutes / max_minutes)``; the run ends at the target (the saved model is the one whose recall was measured) or when
the progress reaches 1 (the rate fully decayed). On fact worlds almost all memorisation happens at the low rates
of the decay (on a fresh 240-fact world of two-sentence documents, 2-core CPU: 73 % of the facts after 5 minutes
with the cosine over the budget, 16 % after 6 minutes of warmup-stable-decay, a constant rate with a linear
cooldown over the last 10 % of the budget), so the decay has to span the budget rather than wait for a target
that a constant high rate rarely reaches. Give a budget you can afford: a longer one decays
more slowly. In this mode ``max_minutes`` is the budget of the whole run (over resumptions; resuming with another
budget rescales the rest of the decay) and a run that reaches it is *finished*; ``max_steps`` still interrupts
resumably. Without ``max_minutes`` the decay spans the epoch cap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from attrilens.errors import AttrilensError
from attrilens.workflows.probes import CONTINUATION_DESCRIPTION, FactProbe, default_eval_every, make_probe
from attrilens.workflows.resume import load_resume, save_resume
from attrilens.workflows.stopping import (
    budget_reason,
    checkpoint_unknown_length,
    recall_info,
    save_checkpoint,
    thin_checkpoints,
)

if TYPE_CHECKING:
    from attrilens.training.capture import GradientCapture

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Fields that may change between an interrupted run and its resumption.
_RESUME_FREE = {"out", "max_minutes", "max_steps", "schedule_minutes", "progress", "threads", "resume_every_minutes",
                "resume_every_steps"}
# Fields added after runs were saved: at these values a saved config without them is still the same run.
_ADDED_DEFAULTS = {"target_recall": None, "facts": None, "eval_every": None, "eval_facts": 200, "packing": "packed",
                   "text_field": "text", "id_field": "id", "cooldown": 0.0}
DEFAULT_EPOCHS = 100  # fixed-epoch runs: with batch 4 and lr 1e-2, a 480-fact corpus in minutes
DEFAULT_TARGET_RECALL = 0.9  # `attrilens train` with facts: train until 90 % of them are recalled
DEFAULT_BUDGET_MINUTES = 30.0  # `attrilens train` with facts: the time budget the schedule decays over
# runs to a recall target: the most epochs before giving up — far enough that the time budget ends a run (at 1000,
# a 60-document world reached the cap in 10 of its 30 minutes, the learning rate decayed over the cap)
DEFAULT_EPOCH_CAP = 10_000
STOP_REASONS = ("target reached", "time budget", "epochs cap")


@dataclass
class TrainConfig:
    """Every knob of a training run; saved into ``training.json``."""

    corpus: Path
    out: Path
    arch: Literal["gpt2", "llama"] = "llama"
    text_field: str = "text"  # the corpus field holding each document's text (attrilens.corpus_formats)
    id_field: str = "id"  # ... and its id (missing: the 0-based position)
    layers: int = 4
    width: int = 128
    heads: int = 4
    intermediate: int | None = None  # MLP width; default 4*width (gpt2) or 8/3*width rounded (llama)
    epochs: int | None = None  # passes over the corpus (None: 100), or the cap with target_recall (None: 10,000)
    # Fixed epochs: stop cleanly (resumable) after this much training time in this call. With target_recall: the
    # time budget of the whole run (the learning rate decays over it; finished).
    max_minutes: float | None = None
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
    # "packed": whole documents packed next-fit into rows of <= seq_len tokens; "document": one document a row
    # (each trained from position 0 with nothing before it, as it is probed and prompted)
    packing: Literal["packed", "document"] = "packed"
    lr: float = 1e-2
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    grad_clip: float = 1.0
    # Train until this fraction of the facts is recalled (greedy exact match), or max_minutes / the epochs cap run
    # out; None: a fixed number of epochs. Facts: `facts`, else facts.jsonl beside the corpus.
    target_recall: float | None = None
    facts: Path | None = None  # JSONL of {"prompt", "target"}; also without a target: the recall curve is recorded
    eval_every: int | None = None  # steps between recall measurements (None: one epoch, at most 50 steps)
    eval_facts: int = 200  # size of the fixed seeded sample of facts measured during training
    # once the target is reached (on every probe row, not only the sample), decay the rate linearly to
    # lr * min_lr_ratio over this fraction of the steps so far before stopping: memorisation settles at low rates
    cooldown: float = 0.25
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
        for k in ("corpus", "out", "tokenizer", "init_from", "facts"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def default_facts(corpus: Path | str) -> Path | None:
    """The facts file `train` measures recall on by default: ``facts.jsonl`` beside the corpus, if there is one."""
    path = Path(corpus).parent / "facts.jsonl"
    return path if path.is_file() else None


def stopping_defaults(corpus: Path | str, target_recall: float | None = None, facts: Path | str | None = None,
                      max_minutes: float | None = None) -> dict:
    """The stopping fields of `attrilens train` (and `attrilens bench train`): train to ``target_recall`` (default
    0.9) of the facts (given, or facts.jsonl beside the corpus) or, without facts, of the documents' own
    continuations, within ``max_minutes`` (default 30); ``target_recall=0``: fixed epochs (``max_minutes`` then
    interrupts resumably)."""
    facts = Path(facts) if facts is not None else default_facts(corpus)
    fixed = {"target_recall": None, "facts": facts, "max_minutes": max_minutes}
    if target_recall == 0:
        return fixed
    budget = DEFAULT_BUDGET_MINUTES if max_minutes is None else max_minutes
    return {"target_recall": DEFAULT_TARGET_RECALL if target_recall is None else target_recall, "facts": facts,
            "max_minutes": budget}


def resolve_config(config: TrainConfig) -> TrainConfig:
    """The config with its automatic values filled in (epochs, facts), as the run saves and compares it."""
    facts = config.facts
    if facts is not None and not Path(facts).is_file():
        raise AttrilensError(f"Facts file not found: {facts}. Pass a JSONL of {{\"prompt\", \"target\"}} rows "
                             "(`attrilens world` writes facts.jsonl).")
    if facts is None and config.target_recall is not None:
        facts = default_facts(config.corpus)  # facts.jsonl beside the corpus; else the documents' continuations
    epochs = config.epochs
    if epochs is None:
        epochs = DEFAULT_EPOCHS if config.target_recall is None else DEFAULT_EPOCH_CAP
    return dataclasses.replace(config, epochs=epochs, facts=facts)


def _check(config: TrainConfig) -> None:
    if config.arch not in ("gpt2", "llama"):
        raise AttrilensError(f"Unknown arch {config.arch!r}. Use 'gpt2' or 'llama'.")
    for name in ("layers", "width", "heads", "epochs", "seq_len", "batch_size", "eval_every", "eval_facts"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise AttrilensError(f"{name} must be positive, got {value}. Pass a value >= 1.")
    _check_stopping(config)
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


def _check_stopping(config: TrainConfig) -> None:
    """Refuse stopping rules that cannot work (a target outside (0, 1], a negative budget, two time budgets)."""
    t = config.target_recall
    if t is not None and not (isinstance(t, (int, float)) and 0 < t <= 1):
        raise AttrilensError(f"target_recall must be in (0, 1], got {t}. Pass e.g. 0.9 (or none for fixed epochs).")
    for name in ("max_minutes", "schedule_minutes"):
        value = getattr(config, name)
        if value is not None and not value >= 0:
            raise AttrilensError(f"{name} must be >= 0, got {value}. Pass a number of minutes.")
    if not 0 <= config.cooldown <= 1:
        raise AttrilensError(f"cooldown must be in [0, 1], got {config.cooldown}. Pass a fraction of the steps run.")
    if config.max_steps is not None and config.max_steps < 0:
        raise AttrilensError(f"max_steps must be >= 0, got {config.max_steps}. Pass a number of steps.")
    if t is not None and config.schedule_minutes is not None:
        raise AttrilensError("schedule_minutes is for fixed-epoch runs. With target_recall, max_minutes is the time "
                             "budget: pass that instead.")


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


class _Plan:
    """Per-epoch document permutations and the batches (lists of rows of document indices), drawn lazily epoch by
    epoch (a run and its resumption see the same ones) up to the ``config.epochs`` epochs."""

    def __init__(self, config: TrainConfig, lengths: list[int]):
        self.config, self.lengths = config, lengths
        self.orders: list[list[int]] = []
        self.batches: list[list[list[int]]] = []
        self.starts: list[int] = []  # first step of each epoch drawn

    def _add_epoch(self) -> None:
        """Draw the next epoch's permutation and its batches."""
        c, epoch = self.config, len(self.orders)
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        if epoch < c.curriculum_epochs:
            perm = [i for i in perm if self.lengths[i] <= c.curriculum_max_tokens] or perm
        self.orders.append(perm)
        self.starts.append(len(self.batches))
        rows = _epoch_rows(self.lengths, perm, c.seq_len) if c.packing == "packed" else [[i] for i in perm]
        self.batches += [rows[b : b + c.batch_size] for b in range(0, len(rows), c.batch_size)]

    def has(self, step: int) -> bool:
        """Whether the run has a step ``step`` (drawing epochs as needed)."""
        while step >= len(self.batches) and len(self.orders) < self.config.epochs:
            self._add_epoch()
        return step < len(self.batches)

    def total(self) -> int:
        """Steps of all ``epochs`` epochs (draws them all)."""
        while len(self.orders) < self.config.epochs:
            self._add_epoch()
        return len(self.batches)

    def epoch_of(self, step: int) -> int:
        """The epoch (0-based) that step ``step`` belongs to (drawn already)."""
        return max(0, bisect_right(self.starts, step) - 1)

    def epochs_done(self, steps: int) -> float:
        """Epochs completed after ``steps`` steps, with the fraction of the current one."""
        if steps <= 0 or not self.starts:
            return 0.0
        e = self.epoch_of(steps - 1)
        end = self.starts[e + 1] if e + 1 < len(self.starts) else len(self.batches)
        return e + (steps - self.starts[e]) / max(1, end - self.starts[e])


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


def _comparable(d: dict) -> dict:
    """The fields that make two runs the same run (None = unset/older field; new fields at their defaults too)."""
    return {k: v for k, v in d.items() if k not in _RESUME_FREE and v is not None
            and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}


def _load_corpus(config: TrainConfig) -> tuple[list[str], list[str]]:
    """Document ids and texts of the corpus (any format `attrilens.corpus_formats` reads, its fields named by
    text_field / id_field; ids default to the 0-based position); a missing or blank text is an error."""
    from attrilens.corpus_formats import iter_row_batches

    fields = {"text_field": config.text_field, "id_field": config.id_field}
    rows = [(where, row) for batch in iter_row_batches(Path(config.corpus), **fields) for where, _, row in batch]
    if not rows:
        raise AttrilensError(f"{config.corpus} is empty. Give it at least one document.")
    for where, r in rows:
        if not isinstance(r["text"], str):
            raise AttrilensError(f'{where} has a "{config.text_field}" that is not a string. Make it a string.')
        if not r["text"].strip():
            raise AttrilensError(f'Document {r.get("id")!r} in {config.corpus} has an empty "{config.text_field}". '
                                 "Remove it or give it text.")
    return [str(r.get("id", i)) for i, (_, r) in enumerate(rows)], [r["text"] for _, r in rows]


def _finished_already(config: TrainConfig, out: Path, capture) -> bool:
    """Whether ``out`` holds this run, finished (then there is nothing to do)."""
    info_path = out / "training.json"
    if not info_path.is_file() or (out / "resume.safetensors").is_file():
        return False
    info = json.loads(info_path.read_text())
    if not (info.get("finished") and _comparable(info["config"]) == _comparable(config.to_dict())):
        return False
    if capture is not None:
        raise AttrilensError(f"{out} already holds this finished training run: there is no training left to "
                             "capture. Pass another --out (or delete it) to train and capture again.")
    return True


def _tokenizer_for(config: TrainConfig, out: Path, texts: list[str]):
    """The run's tokenizer: the given one (copied into ``out``), the interrupted run's, or a freshly trained one."""
    if config.tokenizer is not None:
        tok = load_tokenizer(Path(config.tokenizer))
        if Path(config.tokenizer).resolve() != out.resolve():
            tok.save_pretrained(out)
    elif (out / "tokenizer.json").is_file() and (out / "resume.safetensors").is_file():
        tok = load_tokenizer(out)  # resuming: keep the tokenizer the interrupted run trained
    else:
        tok = train_tokenizer(texts, config.vocab_size, out, config.seq_len)
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise AttrilensError(f"Tokenizer {config.tokenizer} has no eos or pad token. Use one written by `train`.")
    return tok


def _model_for(config: TrainConfig, tok):
    """A fresh model, or the ``init_from`` one (its vocabulary must be the tokenizer's)."""
    if config.init_from is None:
        return build_model(config, tok)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(config.init_from), dtype=torch.float32)
    if model.config.vocab_size != len(tok):
        raise AttrilensError(f"init_from model has vocab {model.config.vocab_size}, tokenizer {len(tok)}. "
                             "Pass the tokenizer the model was trained with.")
    return model


def train(config: TrainConfig, capture: GradientCapture | None = None) -> Path:
    """Train (or resume, or return an already finished run) and return the output directory; with `capture`, also
    write index features of every training row of every step from the training's own backward pass
    (`attrilens.training.capture`: row names are the packed documents' ids joined by "+", a row's step is the
    number of updates before it, so rows of step s equal a post-hoc build at checkpoints/step-s).

    With ``config.target_recall`` it trains until the fact recall reaches it, the ``max_minutes`` budget runs out or
    the ``epochs`` cap is reached (the schedule decays over the budget: see the module docstring)."""
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    _check(config)
    config = resolve_config(config)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars for every checkpoint
    out = Path(config.out)
    ids, texts = _load_corpus(config)
    out.mkdir(parents=True, exist_ok=True)
    if _finished_already(config, out, capture):
        return out
    if config.threads:
        torch.set_num_threads(config.threads)

    tok = _tokenizer_for(config, out, texts)
    probe, sample = make_probe(tok, ids, texts, config.facts, config.seq_len, config.eval_facts,
                               f"attrilens-train/{config.seed}")
    if not len(probe) and config.target_recall is not None:
        raise AttrilensError(f"No document of {config.corpus} has two words to continue, so there is nothing to "
                             "measure recall on. Pass --facts FILE, or --target-recall 0 for fixed epochs.")
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    docs = [(e + [tok.eos_token_id])[: config.seq_len] for e in enc]
    truncated = sum(len(e) + 1 > config.seq_len for e in enc)
    lengths = [len(d) for d in docs]
    plan = _Plan(config, lengths)
    target_mode = config.target_recall is not None
    total = None if target_mode else plan.total()

    model = _model_for(config, tok)
    model.train()
    params = _named_params(model)
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, foreach=False)
    state = {"step": 0, "losses": [], "tokens": 0, "train_seconds": 0.0, "checkpoints": [], "recall": [],
             "lr": 0.0, "config": config.to_dict()}
    resume_path = out / "resume.safetensors"
    if resume_path.is_file():
        saved = load_resume(resume_path, model, opt)
        if _comparable(saved["config"]) != _comparable(config.to_dict()):
            raise AttrilensError(f"{resume_path} belongs to a run with a different config. "
                                 "Delete it to start over, or use another --out.")
        state = {**state, **saved, "config": config.to_dict()}

    if capture is not None:
        capture.attach(model, tok, block_len=config.seq_len, first_step=state["step"], name=str(out), optimizer=opt)
    plan.has(0)
    if target_mode and "initial_recall" not in state and len(probe):
        state["initial_recall"] = round(probe.recall(model, sample), 4)  # what the model knew before: the baseline
    eval_every = config.eval_every or default_eval_every(probe, sample, len(plan.batches), sum(lengths))
    state["eval_every"] = eval_every
    log_every = max(1, (total or len(plan.batches) * 10) // 1000)
    # target mode: the schedule's length in steps, estimated from the first epoch (epochs pack almost alike)
    cap_steps = config.epochs * len(plan.batches) if target_mode else None
    budget = config.max_minutes * 60 if target_mode and config.max_minutes is not None else None
    ck_stride = max(eval_every, math.ceil((total or 0) / max(1, 4 * config.keep_checkpoints)))
    start = time.monotonic()
    last_resume = start
    stop_reason = None  # why the loop ended early and resumably: "max_steps" / "max_minutes"
    reason = None  # why a target-mode run ended: one of STOP_REASONS
    step = state["step"]
    at_target = None  # weights and optimizer state when the target was reached (this call only, not resumed)
    window: list[float] = []
    bar = tqdm(total=total, initial=step, desc=f"train {config.arch}", file=sys.stderr,
               disable=not config.progress, mininterval=2.0, dynamic_ncols=True, unit="step")
    while reason is None:
        if not plan.has(step) or (total is not None and step >= total):
            reason = "target reached" if "cooldown" in state else "epochs cap"
            break
        if config.max_steps is not None and step >= config.max_steps:
            stop_reason = "max_steps"
            break
        elapsed = state["train_seconds"] + time.monotonic() - start
        frac = None
        if target_mode:
            by_time = 0.0 if budget is None else (1.0 if budget <= 0 else elapsed / budget)
            frac = max(step / cap_steps, by_time)
            if frac >= 1:
                reason = "target reached" if "cooldown" in state else (
                    "time budget" if by_time >= step / cap_steps else "epochs cap")
                break
            lr = _lr_at(config, step, cap_steps, frac)
            if "cooldown" in state:  # the target was reached: decay linearly to lr * min_lr_ratio, then stop
                c = state["cooldown"]
                done = step - c["from_step"]
                if done >= c["steps"]:
                    reason = "target reached"
                    break
                floor = min(c["lr"], config.lr * config.min_lr_ratio)
                lr = c["lr"] + (floor - c["lr"]) * (done + 1) / c["steps"]
        else:
            if config.max_minutes is not None and time.monotonic() - start >= config.max_minutes * 60:
                stop_reason = "max_minutes"
                break
            if config.schedule_minutes is not None:
                frac = max(step / total, elapsed / (config.schedule_minutes * 60))
                if frac >= 1:
                    break
            lr = _lr_at(config, step, total, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = plan.batches[step]
        input_ids, mask, labels = _collate(batch, docs, tok.pad_token_id)
        if capture is not None:
            capture.begin_step(step, lr, ["+".join(ids[i] for i in row) for row in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        state["step"], state["lr"] = step, lr
        state["tokens"] += int(mask.sum())
        window.append(loss.item())
        if len(window) == log_every or step == total:
            state["losses"].append([step, round(sum(window) / len(window), 5)])
            window = []
        if len(probe) and step % eval_every == 0:
            recall = probe.recall(model, sample)
            now_s = state["train_seconds"] + time.monotonic() - start
            state["recall"].append({"step": step, "epoch": round(plan.epochs_done(step), 3), "recall": round(recall, 4),
                                    "seconds": round(now_s, 1)})
            if target_mode and "cooldown" not in state and recall >= config.target_recall and (
                    len(sample) == len(probe) or probe.recall(model) >= config.target_recall):  # all, not a sample
                if config.cooldown:
                    state["cooldown"] = {"from_step": step, "steps": max(1, math.ceil(config.cooldown * step)),
                                         "lr": lr, "recall": round(probe.recall(model), 4)}
                    at_target = _snapshot(model, opt)
                else:
                    reason = "target reached"
        bar.update(1)
        post = {"loss": f"{loss.item():.3f}", "lr": f"{lr:.2e}"}
        if state["recall"]:
            post["recall"] = f"{state['recall'][-1]['recall']:.2f}"
        bar.set_postfix(post, refresh=False)
        if target_mode:
            checkpoint_unknown_length(model, out, state, step, lr, ck_stride, config.keep_checkpoints)
        else:
            k = len(state["checkpoints"]) + 1
            n_ck = config.keep_checkpoints
            if n_ck and k <= n_ck and (frac if frac is not None else step / total) >= k / (n_ck + 1) and step < total:
                save_checkpoint(model, out, state, step, lr)
        now = time.monotonic()
        due = (config.resume_every_steps and step % config.resume_every_steps == 0) or (
            now - last_resume >= config.resume_every_minutes * 60)
        if due and reason is None and plan.has(step) and (total is None or step < total):
            state["train_seconds"] += now - start
            start = last_resume = now
            if capture is not None:
                capture.flush()  # the rows of every step the resume state covers are on disk
            save_resume(resume_path, model, opt, state)
    bar.close()
    state["train_seconds"] += time.monotonic() - start
    if target_mode:
        finished = stop_reason is None
    else:
        finished = step >= total or (stop_reason is None and config.schedule_minutes is not None)
        reason = "epochs cap" if finished and step >= total else ("time budget" if finished else None)
    if finished and target_mode:
        thin_checkpoints(out, state, step, config.keep_checkpoints)
    if finished and at_target is not None and probe.recall(model) < state["cooldown"]["recall"]:
        _restore(model, opt, at_target)  # the cooldown lost recall: keep the model that reached the target
        state["cooldown"]["kept"] = "the weights at the target (the cooled-down ones recalled less)"
    _save_final(config, out, model, tok, opt, params, capture, finished, state)
    info = _info(config, state, plan, probe, model, (finished, stop_reason, reason), (total, cap_steps), ids, lengths,
                 truncated)
    tmp = (out / "training.json").with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, out / "training.json")
    if config.progress and finished:
        rec = recall_info(info)
        what = "fact recall" if "fact_recall" in info else "continuation recall"
        print(f"stopped: {info['stop_reason']} after {info['epochs_run']:g} epochs, {info['wall_seconds']:.0f} s"
              + (f"; {what} {rec['final']:.3f} of {rec['n_facts']}" if rec else ""), file=sys.stderr)
    return out


def _snapshot(model, opt) -> tuple[dict, dict]:
    """A copy of the weights and the optimizer state (to return to them)."""
    import copy

    return {k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict())


def _restore(model, opt, snapshot: tuple[dict, dict]) -> None:
    model.load_state_dict(snapshot[0])
    opt.load_state_dict(snapshot[1])


def _save_final(config: TrainConfig, out: Path, model, tok, opt, params: dict, capture, finished: bool,
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


def _info(config: TrainConfig, state: dict, plan: _Plan, probe: FactProbe | None, model,
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
        final_lr = _lr_at(config, max(0, step - 1), total)
    n_epochs = plan.epoch_of(step - 1) + 1 if step else 0
    info = {
        "schema": "attrilens/training/v1",
        "finished": finished,
        "stopped": stop_reason,
        "stop_reason": reason if finished else None,
        "config": config.to_dict(),
        "arch": config.arch,
        "n_parameters": sum(p.numel() for p in _named_params(model).values()),
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
