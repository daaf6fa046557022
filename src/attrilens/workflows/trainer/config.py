"""The scratch trainer's configuration: every knob of a run (TrainConfig), the defaults of runs to a recall target,
the checks that refuse a config that cannot work, and which fields make two runs the same run (resumption)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from attrilens.errors import AttrilensError

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


def check_config(config: TrainConfig) -> None:
    """Refuse a config that cannot train (bad sizes, rates, stopping rules or paths)."""
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


def comparable_config(d: dict) -> dict:
    """The fields that make two runs the same run (None = unset/older field; new fields at their defaults too)."""
    return {k: v for k, v in d.items() if k not in _RESUME_FREE and v is not None
            and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}
