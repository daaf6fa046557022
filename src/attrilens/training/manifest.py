"""The manifest of a training-data index as a type: `Manifest` (what manifest.json holds) and `Stage` (how far a
build has got), written by the one build machine (`training.build`) for the local build, the Ray build and a
train-time capture alike.

On disk it stays one flat JSON object of schema `INDEX_SCHEMA`: the fields below, then `facts` (the method's layout
such as "dim", its fit's facts, "faiss", "preconditioner", a capture's record, …) at the top level beside them, so
readers of an index (`store.read_manifest`, the views) see the same keys as before the type existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from attrilens.training.store import INDEX_SCHEMA, MANIFEST, write_json


class Stage(str, Enum):
    """How far the build of an index directory has got; a killed build resumes at its stage's phase."""

    CAPTURING = "capturing"  # a train-time capture is writing rows (raw when the method fits state at the end)
    FEATURES = "features"  # featurising blocks: the stored features, or raw ones before a fit
    FINISH = "finish"  # the method's state is fitted; raw features are being finished into the stored ones
    FINISHED = "finished"  # every stored shard is written (what is left: after-build state, ANN, the record)
    DONE = "done"  # complete: the index opens


IDENTITY = ("schema", "method", "options", "dtype", "model", "corpus", "eval_queries", "shard_size")


@dataclass
class Manifest:
    """manifest.json of one index: its identity (what it was built from, `IDENTITY`), its stage, its shards."""

    method: str
    options: dict[str, Any]
    dtype: str | None = None  # the stored features' dtype; None for a method that stores none (BM25)
    shard_size: int = 1024
    model: dict[str, Any] | None = None  # {"fingerprint", "name"}
    corpus: dict[str, Any] | None = None  # {"fingerprint", "n_blocks", "n_documents", "block_len"}
    eval_queries: dict[str, Any] | None = None  # {"n", "fingerprint"} of the queries a fit used
    model_dir: str | None = None  # where the optimizer state and checkpoints were read
    chat_template: bool = False  # how eval queries were encoded (a trace from the CLI follows it)
    stage: Stage = Stage.FEATURES
    shards: list[dict[str, Any]] = field(default_factory=list)  # finished stored shards {"file", "start", "rows", …}
    raw_shards: list[dict[str, Any]] = field(default_factory=list)  # raw features kept for a fit, while building
    complete: bool = False
    facts: dict[str, Any] = field(default_factory=dict)  # everything else, flat beside the fields on disk
    schema: str = INDEX_SCHEMA

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The typed manifest of a manifest.json object (keys that are no field go to `facts`)."""
        names = {f.name for f in fields(cls)} - {"facts"}
        known = {k: v for k, v in data.items() if k in names}
        known["stage"] = Stage(known.get("stage", Stage.FEATURES.value))
        return cls(**known, facts={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object written to manifest.json."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "facts"}
        out["stage"] = self.stage.value
        return {**out, **self.facts}

    def identity(self) -> dict[str, Any]:
        """What the index was built from: a resumed build must match it key for key."""
        return {k: self.to_dict()[k] for k in IDENTITY}

    def shard_list(self, key: str) -> list[dict[str, Any]]:
        """The shard records under `key` ("shards" or "raw_shards")."""
        if key not in ("shards", "raw_shards"):
            raise KeyError(key)
        return getattr(self, key)

    def write(self, out: Path) -> None:
        """Write manifest.json into the index directory `out` atomically (after every shard, and at each stage)."""
        write_json(Path(out) / MANIFEST, self.to_dict())
