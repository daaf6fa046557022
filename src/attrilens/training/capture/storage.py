"""Where a train-time capture's rows go: `CaptureStorage` (the index directory, its `Manifest`, shards of rows
written as training goes, resumed after an interrupted run) and `CapturedRunner`, through which the build machine
fits and finishes the captured rows when the capture closes."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.build import IndexBuild, eval_examples, eval_queries_entry, fit_on_raw_shards
from attrilens.training.corpus import Corpus
from attrilens.training.manifest import Manifest, Stage
from attrilens.training.methods import TDA_METHODS, GradientMethod
from attrilens.training.store import INDEX_SCHEMA, MANIFEST, atomic_save, to_dtype, write_json

CAPTURE_SCHEMA = "attrilens/capture/v1"


class CaptureStorage:
    """The storage half of `GradientCapture`: rows buffered, written as shards, and the index finished at close.

    The attributes it reads (`out`, `method`, `lm`, `dtype`, `shard_size`, the row buffers, the moments) are set by
    `GradientCapture`."""

    out: Path
    method: GradientMethod
    lm: LM
    dtype: str
    shard_size: int
    manifest: Manifest
    eval_queries: list[dict]
    _buffer: list[tuple[np.ndarray, list[dict]]]
    _rows: list[dict]
    _raw: bool
    _moments: dict | None
    _moment_step: int
    seconds: float
    discarded: int
    partial: int

    def _identity(self) -> dict[str, Any]:
        return {"schema": INDEX_SCHEMA, "method": self.method.name, "options": self.method.options.to_dict(),
                "dtype": self.dtype, "shard_size": self.shard_size}

    def _open(self, first_step: int) -> None:
        """Create the index directory, or resume an unfinished capture of the same settings from `first_step`."""
        self.out.mkdir(parents=True, exist_ok=True)
        mpath = self.out / MANIFEST
        old = None
        if mpath.is_file():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("capture", {}).get("schema") != CAPTURE_SCHEMA or old.get("complete"):
                raise AttrilensError(f"{self.out} already holds an index. Pass another directory to capture into, "
                                     "or delete it.")
            diff = [k for k, v in self._identity().items() if old.get(k) != v]
            if diff:
                raise AttrilensError(f"{self.out} holds an unfinished capture with other settings ({', '.join(diff)}). "
                                     "Use the same settings, another directory, or delete it.")
            if old.get("stage") not in (Stage.CAPTURING.value, Stage.FINISH.value):  # its shards hold finished rows
                raise AttrilensError(f"The capture in {self.out} was interrupted while it finished its rows, so it "
                                     "cannot take more. Delete the directory and train again (or capture into "
                                     "another one).")
        self.manifest = Manifest(self.method.name, self.method.options.to_dict(), dtype=self.dtype,
                                 shard_size=self.shard_size, stage=Stage.CAPTURING,
                                 facts={"capture": {"schema": CAPTURE_SCHEMA}, **self.method.layout()})
        (self.out / "shards").mkdir(exist_ok=True)
        kept = []
        for s in sorted(old["shards"], key=lambda s: s["start"]) if old else []:
            try:
                rows = json.loads((self.out / s["rows_file"]).read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                raise AttrilensError(f"The unfinished capture in {self.out} lost {s.get('rows_file')}. Delete the "
                                     "directory and train again (or capture into another one).") from None
            keep = [r for r in rows if r["step"] < first_step]
            if len(keep) < len(rows):  # rows of steps the resumed run trains again
                if keep:
                    arr = np.load(self.out / s["file"], allow_pickle=False)[: len(keep)]
                    self._buffer.append((arr.astype(np.float32), keep))
                break
            kept.append(s)
            self._rows += rows
        for p in self.out.glob("shards/*"):  # everything not kept is rewritten
            if p.name not in {Path(s[k]).name for s in kept for k in ("file", "rows_file")}:
                p.unlink()
        self.manifest.shards = kept
        self.manifest.write(self.out)

    def _write(self, full_only: bool = False) -> None:
        """Write buffered rows as shards (only whole shards of `shard_size` rows when `full_only`)."""
        t0 = time.perf_counter()
        feats = np.concatenate([f for f, _ in self._buffer]) if self._buffer else np.zeros((0, self.method.dim))
        rows = [r for _, rs in self._buffer for r in rs]
        start = 0
        shards = self.manifest.shards
        while len(rows) - start >= (self.shard_size if full_only else 1):
            n = min(self.shard_size, len(rows) - start)
            chunk, meta = feats[start : start + n], rows[start : start + n]
            k = len(shards)
            first = sum(s["rows"] for s in shards)
            path, rpath = self.out / "shards" / f"shard-{k:05d}.npy", self.out / "shards" / f"rows-{k:05d}.json"
            arr = to_dtype(torch.from_numpy(chunk), "float32" if self._raw else self.dtype, row_labels(meta))
            write_json(rpath, {"rows": meta})
            sha = atomic_save(path, arr)
            shards.append({"file": f"shards/{path.name}", "start": first, "rows": n, "sha256": sha,
                           "rows_file": f"shards/{rpath.name}"})
            self.manifest.write(self.out)
            self._rows += meta
            start += n
        self._buffer = [(feats[start:], rows[start:])] if start < len(rows) else []
        self.seconds += time.perf_counter() - t0

    def _finish_index(self, model_dir: Path | str | None) -> Path:
        """The corpus of captured sequences and the complete manifest naming the final model (its weights now),
        after the build machine's fit and finish."""
        model = self.lm.model
        training = model.training
        final = LM(model, self.lm.tokenizer, name=str(model_dir) if model_dir else self.lm.name)
        model.train(training)
        self._fit_and_finish()
        model.train(training)
        corpus = self._corpus()
        corpus.to_parquet(self.out / "corpus.parquet")
        m = self.manifest
        m.model, m.model_dir, m.chat_template = ({"fingerprint": final.fingerprint(), "name": final.name},
                                                 str(model_dir) if model_dir else None, False)
        m.corpus = {"fingerprint": corpus.fingerprint, "n_blocks": len(corpus), "n_documents": len(set(corpus.docs)),
                    "block_len": corpus.block_len}
        m.eval_queries = eval_queries_entry(self.eval_queries)
        m.facts["capture"].update(self._record())
        IndexBuild(self.out, self.method, m, progress=False).complete()  # the one switch to the finished index
        return self.out

    def _fit_and_finish(self) -> None:
        """The build machine's fit and finish on the captured rows; the moments the rows were corrected with, and
        the method's record of them, go into the index."""
        m, start = self.method, time.perf_counter()
        if self.corrects:
            if self._moments is None:
                raise AttrilensError("No optimizer step was taken while capturing, so there are no second moments to "
                                     "correct with. Train at least one step, or capture with "
                                     "options={'correction': False}.")
            m.use_moments(self._moments, len(self._rows))
        build, runner = IndexBuild(self.out, m, self.manifest, progress=False), CapturedRunner(self)
        build.fit(runner, eval_examples(self.lm, self.eval_queries))
        build.finish(runner)
        if not m.needs_fit and m.state():  # a fit saved the state already (the moments included: used before it)
            build.save_state()
        self.manifest.facts.update({**m.layout(), **m.capture_facts(self._moment_step)})
        self.seconds += time.perf_counter() - start

    def _corpus(self) -> Corpus:
        """The captured sequences as the index's corpus: one block per row, its block number the row's step."""
        tok, rows, block_len = self.lm.tokenizer, self._rows, self.method.options.block_len
        h = hashlib.sha256(f"captured block_len={block_len}\n".encode())
        for r in rows:
            h.update(json.dumps([r["name"], r["step"], r["tokens"]]).encode())
        texts = [tok.decode(r["tokens"], skip_special_tokens=True, clean_up_tokenization_spaces=False) for r in rows]
        return Corpus([r["name"] for r in rows], [r["step"] for r in rows], texts, [r["tokens"] for r in rows],
                      block_len, h.hexdigest())

    def _record(self) -> dict[str, Any]:
        """The manifest's "capture" record: what a row is, and the [first row, rows, step, lr] runs of the rows."""
        rows, runs = self._rows, []
        for i, r in enumerate(rows):
            if runs and runs[-1][2] == r["step"] and runs[-1][3] == r["lr"] and runs[-1][0] + runs[-1][1] == i:
                runs[-1][1] += 1
            else:
                runs.append([i, 1, r["step"], r["lr"]])
        return {
            "rows": "one per training sequence per optimizer step; a row's block is its step",
            "gradient_at": "the parameters the row's step trained from (after `step` optimizer updates): a post-hoc "
                           "build at checkpoints/step-<step> gives the same row",
            "loss": "per-example sum of next-token losses (the trainer's loss divided by its per-row scale)",
            "model": "final: the manifest's model is the model at the end of training (queries are featurised there)",
            "steps": runs, "first_step": rows[0]["step"], "last_step": rows[-1]["step"],
            "n_steps": len({r["step"] for r in rows}),
            "seconds": round(self.seconds, 3), "forwards_without_backward": self.discarded,
            # rows whose labels skipped tokens inside them: their features are of that loss, which a post-hoc
            # build of the stored tokens (every token after the first counts) does not reproduce
            "rows_with_partial_loss": self.partial,
        }


class CapturedRunner:
    """The build machine's runner for a capture: the rows are already on disk (raw when the method fits state,
    written by the training's own backward); it fits on them and writes the finished shards beside them."""

    def __init__(self, capture: CaptureStorage):
        self.capture, self.raw_files = capture, []

    def session(self, build: IndexBuild) -> AbstractContextManager[None]:
        return nullcontext()

    def stored(self, build: IndexBuild) -> None:
        raise AttrilensError("A capture's rows come from the training's backward pass; the build does not "
                             "featurise them. Close the capture instead.")

    raw = stored

    def fit(self, build: IndexBuild, eval_raw: torch.Tensor | None) -> dict[str, Any]:
        ordered = sorted(build.manifest.shards, key=lambda s: s["start"])
        return fit_on_raw_shards(build.method, [build.out / s["file"] for s in ordered], len(self.capture._rows),
                                 eval_raw)

    def finish(self, build: IndexBuild) -> None:
        """Finished shards (R^(−1/2), unit norm) beside the raw ones; the manifest switches to them."""
        rows_of, finished = self.capture._rows, []
        ordered = sorted(build.manifest.shards, key=lambda s: s["start"])
        for k, s in enumerate(ordered):
            rows = rows_of[s["start"] : s["start"] + s["rows"]]
            x = build.method.finish(torch.from_numpy(np.load(build.out / s["file"]).astype(np.float32, copy=False)))
            arr = to_dtype(x, build.manifest.dtype, row_labels(rows))
            path = build.out / "shards" / f"finished-{k:05d}.npy"
            finished.append({**s, "file": f"shards/{path.name}", "sha256": atomic_save(path, arr)})
        build.manifest.shards, self.raw_files = finished, [build.out / s["file"] for s in ordered]

    def cleanup(self, build: IndexBuild) -> None:
        """The raw rows, once the manifest lists the finished ones."""
        for f in self.raw_files:
            f.unlink(missing_ok=True)


def capture_methods() -> list[str]:
    """The registered methods a train-time capture can write (they declare `capturable`)."""
    return [name for name, cls in TDA_METHODS.items() if cls.capturable]


def row_labels(rows: Sequence[dict]) -> list[str]:
    """How a captured row is named in an error about its features: its example and step."""
    return [f"{r['name']} (step {r['step']})" for r in rows]
