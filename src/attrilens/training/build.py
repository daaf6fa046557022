"""The one build machine of a training-data index: prepare → featurise → fit → finish → complete.

Each phase records its `Stage` in the `Manifest` as it ends, so a build killed anywhere resumes at the phase it
was in. The machine decides what runs, from what the method declares (`needs_prepare`, `stores_features`,
`needs_fit`, `fits_after_build`), never from its name; *where* shards are featurised is a runner's business:
`LocalRunner` (this process), `distributed.RayRunner` (an actor pool), and a train-time capture
(`capture.GradientCapture`), whose rows come from the training's own backward and which hands the machine its
fit and finish (`capture.CapturedRunner`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.ann import build_ann
from attrilens.training.corpus import Corpus, CorpusFile
from attrilens.training.gradients import Example
from attrilens.training.manifest import Manifest, Stage
from attrilens.training.methods import TDAMethod
from attrilens.training.preconditioning import moment_sum
from attrilens.training.store import (
    PRECONDITIONER,
    file_record,
    load_tensors,
    open_shards,
    remove_folder,
    save_tensors,
    to_dtype,
    write_shards,
)


class ShardRunner(Protocol):
    """Where a build's shards are featurised: every block's stored features, or raw ones → a fit → finished ones."""

    def session(self, build: IndexBuild) -> AbstractContextManager[None]:
        """What the runner holds while the build's phases run (a Ray cluster and its actors; nothing locally)."""

    def stored(self, build: IndexBuild) -> None:
        """Write the stored features of every block not yet in `build.manifest.shards` (a method without a fit)."""

    def raw(self, build: IndexBuild) -> None:
        """Write the raw features of every block not yet in `build.manifest.raw_shards`."""

    def fit(self, build: IndexBuild, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        """Fit the method's state on the raw features; return facts for the manifest."""

    def finish(self, build: IndexBuild) -> None:
        """Write the stored shards from the raw ones with the fitted state applied."""

    def cleanup(self, build: IndexBuild) -> None:
        """Remove the raw features once the manifest no longer lists them."""


class IndexBuild:
    """One build of an index directory, phase by phase, with the manifest written at the end of each phase (and
    after every shard by the runners)."""

    def __init__(self, out: Path, method: TDAMethod, manifest: Manifest, blocks: Corpus | CorpusFile | None = None, *,
                 progress: bool = True):
        self.out, self.method, self.manifest, self.blocks, self.progress = Path(out), method, manifest, blocks, progress

    @property
    def preconditioner(self) -> Path:
        """The file of the method's fitted state."""
        return self.out / PRECONDITIONER

    def save(self) -> None:
        """Write the manifest now."""
        self.manifest.write(self.out)

    def save_state(self) -> None:
        """Write the method's fitted state (preconditioner.safetensors)."""
        save_tensors(self.preconditioner, self.method.state())

    def load_state(self) -> None:
        """Restore the state an earlier run of this build saved (a resumed build)."""
        self.method.load(load_tensors(self.preconditioner), self.blocks)

    # ------------------------------------------------------------------ phases
    def prepare(self) -> None:
        """The state featurising itself needs, fitted on the corpus once (TrackStar's estimated second moments); a
        resumed build reloads it."""
        m = self.method
        if not m.needs_prepare:
            return
        if self.manifest.facts.get("prepared"):
            self.load_state()
            return
        self.manifest.facts.update(m.prepare(self.blocks, self.progress))
        self.save_state()
        self.manifest.facts["prepared"] = True
        self.save()

    def featurise(self, runner: ShardRunner) -> None:
        """Every block's features into shards: the stored ones, or the raw ones a fit needs."""
        m = self.method
        if not m.stores_features or self.manifest.stage != Stage.FEATURES:
            return
        (runner.raw if m.needs_fit else runner.stored)(self)

    def fit(self, runner: ShardRunner, eval_examples: Sequence[Example] = ()) -> None:
        """Fit the method's state on the raw features (and the eval queries'), save it, and move to FINISH; a build
        past this phase reloads the saved state instead."""
        m = self.method
        if not (m.stores_features and m.needs_fit):
            return
        if self.manifest.stage in (Stage.FEATURES, Stage.CAPTURING):
            eval_raw = m.featurize(list(eval_examples)) if eval_examples else None
            facts = runner.fit(self, eval_raw)
            self.save_state()
            self.manifest.stage = Stage.FINISH
            self.manifest.facts.update(facts)
            self.save()
        else:
            self.load_state()

    def finish(self, runner: ShardRunner) -> None:
        """The fitted state applied to the raw features: the stored shards; then the raw ones go."""
        m = self.method
        if not (m.stores_features and m.needs_fit):
            return
        if self.manifest.stage == Stage.FINISH:
            runner.finish(self)
            self.manifest.stage, self.manifest.raw_shards = Stage.FINISHED, []
            self.save()
        runner.cleanup(self)

    def complete(self, *, faiss_kind: str | None = None, faiss_options: dict | None = None,
                 **facts: Any) -> None:
        """State fitted from the stored shards (`fits_after_build`), the optional FAISS index, the record of the
        state file, and the switch that makes the index open: stage DONE, complete."""
        m, man = self.method, self.manifest
        if m.stores_features:
            if m.fits_after_build or faiss_kind:
                shards = open_shards(self.out, man.to_dict())
                if m.fits_after_build and m.after_build(shards):
                    self.save_state()
                if faiss_kind:
                    facts["faiss"] = build_ann(self.out, shards, m.dim, faiss_kind, faiss_options)
            facts["bytes_per_example"] = m.dim * (2 if man.dtype == "float16" else 4)
        if self.preconditioner.is_file():  # recorded, so that opening the index can tell a missing or damaged one
            facts["preconditioner"] = file_record(self.preconditioner)
        man.facts.update(facts)
        man.stage, man.complete = Stage.DONE, True
        self.save()


class LocalRunner:
    """Featurise shards in this process, a shard at a time, from the corpus (which may be a file read a row group at
    a time: rows are never all in memory)."""

    def session(self, build: IndexBuild) -> AbstractContextManager[None]:
        return nullcontext()

    def _raw_rows(self, build: IndexBuild, rows: range, advance=lambda n: None) -> torch.Tensor:
        # in pieces of whole batches from the shard's start (the same batches, so the same bits) to show progress
        m, blocks = build.method, build.blocks
        step, parts = 4 * getattr(m, "batch_size", 16), []
        for a in range(rows.start, rows.stop, step):
            piece = range(a, min(a + step, rows.stop))
            parts.append(m.featurize([Example.block(blocks.tokens[r], blocks.block_id(r)) for r in piece]))
            advance(len(piece))
        return torch.cat(parts)

    def _stored(self, build: IndexBuild, x: torch.Tensor, rows: range) -> np.ndarray:
        return to_dtype(build.method.finish(x), build.manifest.dtype, [build.blocks.block_id(r) for r in rows])

    def _write(self, build: IndexBuild, key: str, folder: str, make, desc: str) -> None:
        write_shards(build.out, build.manifest.shard_list(key), build.out / folder, len(build.blocks),
                     build.manifest.shard_size, make, commit=build.save, desc=desc, progress=build.progress)

    def stored(self, build: IndexBuild) -> None:
        self._write(build, "shards", "shards",
                    lambda rows, advance: self._stored(build, self._raw_rows(build, rows, advance), rows),
                    f"featurise {build.method.name}")

    def raw(self, build: IndexBuild) -> None:
        self._write(build, "raw_shards", "raw",
                    lambda rows, advance: self._raw_rows(build, rows, advance).numpy().astype(np.float32),
                    f"featurise {build.method.name}")

    def fit(self, build: IndexBuild, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        ordered = sorted(build.manifest.raw_shards, key=lambda s: s["start"])
        return fit_on_raw_shards(build.method, [build.out / s["file"] for s in ordered], len(build.blocks), eval_raw)

    def finish(self, build: IndexBuild) -> None:
        raw_files = {s["start"]: build.out / s["file"] for s in build.manifest.raw_shards}
        self._write(build, "shards", "shards",
                    lambda rows, _: self._stored(build, torch.from_numpy(np.load(raw_files[rows.start])), rows),
                    "apply the fitted state")

    def cleanup(self, build: IndexBuild) -> None:
        remove_folder(build.out / "raw")


def fit_on_raw_shards(m: TDAMethod, files: Sequence[Path], n_rows: int, eval_raw: torch.Tensor | None) -> dict:
    """Fit the method's state (TrackStar's R) on the raw features in `files` (in row order); returns the facts for
    the manifest. From Σ ΦᵀΦ when there are at least as many rows as dimensions (as a Ray build reduces it), else
    the thin form on the features themselves (cheaper, the same R)."""
    if getattr(m, "fits_moments", False) and n_rows >= m.dim:
        total = sum(moment_sum(torch.from_numpy(np.load(f).astype(np.float32, copy=False))) for f in files)
        return m.fit_moments(total, n_rows, eval_raw)
    train_raw = torch.from_numpy(np.concatenate([np.load(f) for f in files]).astype(np.float32, copy=False))
    return m.fit(train_raw, eval_raw)


def eval_queries_entry(queries: Sequence[dict]) -> dict:
    """The manifest's record of the eval queries an index was fitted with: how many, and a fingerprint."""
    fp = hashlib.sha256(json.dumps([[q.get("prompt"), q.get("target")] for q in queries]).encode()).hexdigest()
    return {"n": len(queries), "fingerprint": fp}


def eval_examples(lm: LM, queries: Sequence[dict]) -> list[Example]:
    """Eval queries ({"prompt", "target"}) as examples whose response tokens count (TrackStar's R_eval)."""
    out = []
    for k, q in enumerate(queries):
        if not q.get("prompt") or not q.get("target"):
            raise AttrilensError(f"Eval query {q.get('id', k)!r} needs a non-empty prompt and target.")
        out.append(Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"]),
                                    name=str(q.get("id", k))))
    return out
