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

The package, one job a module: ``config`` (TrainConfig, its defaults and checks), ``inputs`` (corpus, tokenizer,
model, optimizer), ``epoch_plan`` (the data order, batches, learning-rate schedule), ``loop`` (the optimizer steps
and their stops), ``output`` (the saved model and training.json), ``run`` (``train``, the steps in order).
"""

from __future__ import annotations

from attrilens.workflows.probes import FactProbe
from attrilens.workflows.stopping import recall_info
from attrilens.workflows.trainer.config import (
    DEFAULT_BUDGET_MINUTES,
    DEFAULT_EPOCH_CAP,
    DEFAULT_EPOCHS,
    DEFAULT_TARGET_RECALL,
    STOP_REASONS,
    TrainConfig,
    check_config,
    comparable_config,
    default_facts,
    resolve_config,
    stopping_defaults,
)
from attrilens.workflows.trainer.config import comparable_config as _comparable  # noqa: F401 (its old name)
from attrilens.workflows.trainer.inputs import EOS, PAD, build_model, load_tokenizer, train_tokenizer
from attrilens.workflows.trainer.run import train

__all__ = ["DEFAULT_BUDGET_MINUTES", "DEFAULT_EPOCHS", "DEFAULT_EPOCH_CAP", "DEFAULT_TARGET_RECALL", "EOS", "PAD",
           "STOP_REASONS", "FactProbe", "TrainConfig", "build_model", "check_config", "comparable_config",
           "default_facts", "load_tokenizer", "recall_info", "resolve_config", "stopping_defaults", "train",
           "train_tokenizer"]
