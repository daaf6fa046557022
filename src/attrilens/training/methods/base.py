"""`TDAMethod`: what a training-data attribution method tells the index — how to featurise, fit, store and score.

A method is one registered class with its own options dataclass (`Options`, a `TDAOptions`). The build machine
(`training.build.IndexBuild`) calls, as the method's class flags and properties declare:
- build: [`prepare` on the corpus, when `needs_prepare`: state featurising itself needs, e.g. TrackStar's
  estimated second moments] → `featurize` (examples → raw features) → [`fit` on the raw train/eval features, when
  `needs_fit`] → `finish` (raw → stored) → shards → [`after_build` when `fits_after_build`: state fitted from the
  stored shards, e.g. DataInf's λ]; `state()` is saved in preconditioner.safetensors and given back to `load` when
  the index is opened; a train-time capture takes the `capturable` methods (`needs_optimizer_state`,
  `corpus_options` and `capture_facts` say what it reads and records);
- search: `query` (one query → its vector, or its text) and `score_stream` (scores of every stored row).
A method that stores nothing (`stores_features = False`, e.g. BM25) only needs `load`, `query`, `score_stream`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.options import HasOptions, option
from attrilens.registry import Registry
from attrilens.training.corpus import Corpus
from attrilens.training.gradients import Example
from attrilens.training.search import ScoreStream, dot_stream
from attrilens.training.store import Shards


@dataclass
class TDAOptions:
    """Options every training-data method takes (saved in the index manifest; a change means a new index)."""

    block_len: int = option(128, help="tokens per training block: the unit a trace ranks (shorter blocks point "
                                      "closer to the evidence, more rows to store)")

    def __post_init__(self) -> None:
        if self.block_len < 2:
            raise AttrilensError(f"block_len must be at least 2 tokens, got {self.block_len}.")

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (the manifest's "options")."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Query:
    """One query as token ids (gradient methods) and as text (lexical methods); a method uses what it needs."""

    example: Example | None = None
    text: str | None = None


class TDAMethod(HasOptions):
    """Base of every training-data method: raw features → stored features, a query → its vector, and scoring."""

    name: ClassVar[str] = ""  # set by TDA_METHODS.register
    Options: ClassVar[type[TDAOptions]] = TDAOptions
    uses_eval_queries: ClassVar[bool] = False  # the build passes eval queries to `fit`
    stores_features: ClassVar[bool] = True  # False: nothing is featurised (the index keeps only the corpus)
    has_opponents: ClassVar[bool] = True  # False: trace returns no opponents (BM25 scores are never negative)
    needs_lora: ClassVar[bool] = False  # the benchmark runs it on a LoRA fine-tune of the model
    fits_after_build: ClassVar[bool] = False  # `after_build` fits state from the stored shards (DataInf's λ)
    # a train-time capture can write it: its features are one loss gradient per training sequence
    capturable: ClassVar[bool] = False
    capture_refusal: ClassVar[str] = "its features are not one loss gradient per example"  # why not, when not
    corpus_options: ClassVar[tuple[str, ...]] = ()  # options about what a build estimates from the corpus itself
    raw_dot_product: ClassVar[bool] = False  # scores are plain dot products of raw gradients (TracIn sums them)
    dim: int = 0  # stored features per example

    def __init__(self, options: TDAOptions, lm: LM, model_dir: Path | str | None = None, *, batch_size: int = 16):
        if not isinstance(options, self.Options):
            raise AttrilensError(f"{self.name or type(self).__name__} takes {self.Options.__name__}, not "
                                 f"{type(options).__name__}. Pass its own options.")
        if batch_size < 1:
            raise AttrilensError(f"batch_size must be positive, got {batch_size}.")
        self.options = options
        self.lm = lm
        self.model_dir = Path(model_dir) if model_dir is not None else None  # optimizer state, checkpoints
        self.batch_size = batch_size

    # ------------------------------------------------------------------ features
    def featurize(self, examples: Sequence[Example]) -> torch.Tensor:
        """Raw per-example features [N, dim] (before any fitted preconditioner)."""
        raise NotImplementedError(f"{type(self).__name__} does not featurise examples.")

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw features → the features stored in (and compared by) the index."""
        return raw.float()

    def query(self, query: Query) -> torch.Tensor | str:
        """What `score_stream` compares with the stored rows: by default the finished features of the query."""
        if query.example is None:
            raise AttrilensError(f"{self.name} scores a query's token ids, not text. Pass an Example.")
        return self.finish(self.featurize([query.example]))[0]

    @property
    def query_passes(self) -> int:
        """Forward (and backward) passes featurising one query costs (recorded in the trace's cost)."""
        return 1

    def layout(self) -> dict[str, Any]:
        """Facts about the stored features for the manifest (at least "dim")."""
        return {"dim": self.dim}

    # ------------------------------------------------------------------ fitted state
    @property
    def needs_prepare(self) -> bool:
        """Whether `featurize` needs `prepare` on the corpus first (state kept in `state()`, restored by `load`)."""
        return False

    def prepare(self, corpus: Corpus, progress: bool = False) -> dict[str, Any]:
        """Fit what featurising needs from the corpus itself, before any feature; return facts for the manifest."""
        return {}

    @property
    def needs_fit(self) -> bool:
        """Whether `finish` needs `fit` on every raw training feature first (the build keeps raw shards)."""
        return False

    def fit(self, train_raw: torch.Tensor, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """Fit a preconditioner from the raw train (and eval-query) features; return facts for the manifest."""
        return {}

    def after_build(self, shards: Shards) -> bool:
        """Fit state from the stored features once every shard is written; True when there is new state to save."""
        return False

    def state(self) -> dict[str, torch.Tensor]:
        """Fitted tensors to save with the index (preconditioner.safetensors)."""
        return {}

    def load(self, state: dict[str, torch.Tensor], corpus: Corpus) -> None:
        """Get ready to score an opened index: restore the saved `state` (the corpus is there for text methods)."""

    def check_state(self) -> None:
        """Raise if a finished index lacks state that scoring needs (e.g. its preconditioner file was lost)."""

    @property
    def needs_optimizer_state(self) -> bool:
        """Whether a capture of this method reads the optimizer's second moments at every step (`use_moments`)."""
        return False

    def capture_facts(self, optimizer_step: int) -> dict[str, Any]:
        """Facts a capture records in the manifest about how its rows were featurised (the moments used)."""
        return {}

    # ------------------------------------------------------------------ search
    @property
    def bounded(self) -> bool:
        """Whether stored and query features are unit vectors (|score| ≤ 1: fp16 shards are multiplied in fp16)."""
        return False

    @property
    def supports_faiss(self) -> bool:
        """Whether scores are one inner product of the stored row and the query (what a FAISS index computes)."""
        return True

    def score_stream(self, shards: Shards, query: torch.Tensor | str) -> ScoreStream:
        """(first row, scores) blocks over the stored shards for one `query(...)` result: x·q by default."""
        yield from dot_stream(shards, query.float(), bounded=self.bounded)

    # ------------------------------------------------------------------ benchmark
    @classmethod
    def benchmark_variants(cls, quick: bool) -> list[tuple[str, dict[str, Any]]]:
        """(row label, options) of the rows `attrilens bench training` runs for this method."""
        return [(cls.name, {})]


TDA_METHODS: Registry[type[TDAMethod]] = Registry("training-data method")
