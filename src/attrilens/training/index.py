"""On-disk training-data attribution index: build (resumable, atomic per shard) and query (exact, streamed).

Layout of an index directory:
    manifest.json              schema, method settings, projection seed/dims, model + corpus fingerprints, shards
    corpus.parquet             block ids, texts, token ids (fingerprint in the metadata)
    preconditioner.safetensors TrackStar's R^(-1/2) (thin form) or DataInf's λ_l
    shards/shard-00000.npy     features, fp16 (or fp32), one row per block; .npy so search can memory-map them
    raw/                       TrackStar's fp32 features before R, only while building
    faiss.index                optional exact inner-product FAISS index (dot-product methods)

A shard is written to `<name>.tmp`, fsynced and renamed; the manifest (rewritten atomically after every shard)
lists only finished shards with their sha256, so a killed or failed build never leaves a file that is read as
complete, and rerunning the same build continues where it stopped and writes byte-identical shards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.training.corpus import Corpus, make_corpus, read_documents
from attrilens.training.gradients import Example
from attrilens.training.methods import BM25Retriever, GradientMethod, MethodConfig, bm25_query_text
from attrilens.training.result import TraceResult

INDEX_SCHEMA = "attrilens/training-index/v2"  # v2: projection allocation in the settings
FP16_MAX = 65504.0


# ---------------------------------------------------------------------- atomic files
def _write_array(f, array: np.ndarray) -> None:
    """Write one array in .npy format to an open binary file (the one place that writes shard bytes)."""
    np.lib.format.write_array(f, array, allow_pickle=False)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp)`, fsync and rename: no reader ever sees a partial file; a full disk is named."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise AttrilensError(f"Disk full while writing {path}. Free some space and rerun the same build: "
                                 "finished shards are kept and the build resumes.") from exc
        raise
    except BaseException:  # interrupted: never leave a torn file behind (a hard kill may; a rerun overwrites it)
        tmp.unlink(missing_ok=True)
        raise


def _atomic_save(path: Path, array: np.ndarray) -> str:
    """Write `array` to `path` atomically (see `_atomic_write`); return the file's sha256."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            _write_array(f, np.ascontiguousarray(array))

    _atomic_write(path, write)
    return _sha256(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def _to_dtype(x: torch.Tensor, dtype: str, names: Sequence[str]) -> np.ndarray:
    arr = x.float().numpy()
    if dtype == "float16":
        big = np.abs(arr).max(axis=1) > FP16_MAX if arr.size else np.zeros(0, bool)
        if big.any():
            r = int(np.nonzero(big)[0][0])
            raise AttrilensError(f"The features of example {names[r]} overflow float16 (|x| up to "
                                 f"{float(np.abs(arr[r]).max()):.3g} > 65504). Rebuild with dtype float32 "
                                 "(--dtype float32) or a unit-normalised method (trackstar, grad-cos).")
        return arr.astype(np.float16)
    return arr.astype(np.float32)


# ---------------------------------------------------------------------- loading helpers
def _as_corpus(corpus, lm: LM, block_len: int) -> Corpus:
    if isinstance(corpus, Corpus):
        if corpus.block_len != block_len:
            raise AttrilensError(f"The corpus was cut into blocks of {corpus.block_len} tokens, the method asks for "
                                 f"{block_len}. Pass matching block_len.")
        return corpus
    return make_corpus(corpus, lm.tokenizer, block_len=block_len)


def _default_model_dir(lm: LM) -> Path | None:
    p = Path(lm.name) if lm.name else None
    return p if p is not None and p.is_dir() else None


def _eval_examples(lm: LM, queries: Sequence[dict]) -> list[Example]:
    out = []
    for k, q in enumerate(queries):
        if not q.get("prompt") or not q.get("target"):
            raise AttrilensError(f"Eval query {q.get('id', k)!r} needs a non-empty prompt and target.")
        out.append(Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"]),
                                    name=str(q.get("id", k))))
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, mininterval=1.0, dynamic_ncols=True)


# ---------------------------------------------------------------------- build
def build_index(
    lm: LM,
    corpus: Corpus | Path | str | Sequence[dict],
    out: Path | str,
    *,
    method: str = "trackstar",
    proj_dim: int | None = 4096,
    model_dir: Path | str | None = None,
    eval_queries: Sequence[dict] | Path | str | None = None,
    shard_size: int = 1024,
    dtype: str = "float16",
    use_faiss: bool = False,
    progress: bool = True,
    **options,
) -> TrainingIndex:
    """Featurise a corpus with one method into an index directory (resumes an unfinished build of the same index)."""
    if dtype not in ("float16", "float32"):
        raise AttrilensError(f"dtype must be 'float16' or 'float32', not {dtype!r}.")
    if shard_size < 1:
        raise AttrilensError(f"shard_size must be positive, got {shard_size}.")
    unknown = sorted(set(options) - set(MethodConfig.__dataclass_fields__))
    if unknown:
        raise AttrilensError(f"Unknown option(s) {', '.join(unknown)} for build_index. Valid method options: "
                             f"{', '.join(f for f in MethodConfig.__dataclass_fields__ if f not in ('method', 'proj_dim'))}.")
    config = MethodConfig(method=method, proj_dim=proj_dim, **options)
    out = Path(out)
    blocks = _as_corpus(corpus, lm, config.block_len)
    model_dir = Path(model_dir) if model_dir is not None else _default_model_dir(lm)
    if isinstance(eval_queries, (str, Path)):
        eval_queries = list(iter_jsonl(Path(eval_queries), require=("prompt", "target")))
    eval_queries = list(eval_queries or []) if config.method == "trackstar" else []  # only R_eval uses them
    eval_fp = hashlib.sha256(json.dumps([[q.get("prompt"), q.get("target")] for q in eval_queries]).encode()).hexdigest()
    identity = {
        "schema": INDEX_SCHEMA,
        "method": config.method,
        "settings": config.identity(),
        "dtype": dtype if config.method != "bm25" else None,
        "model": {"fingerprint": lm.fingerprint(), "name": lm.name},
        "corpus": {"fingerprint": blocks.fingerprint, "n_blocks": len(blocks), "n_documents": len(set(blocks.docs)),
                   "block_len": blocks.block_len},
        "eval_queries": {"n": len(eval_queries), "fingerprint": eval_fp},
        "shard_size": shard_size,
    }
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    manifest = None
    if mpath.is_file():
        manifest = json.loads(mpath.read_text())
        old = {k: manifest.get(k) for k in identity}
        if old != identity:
            diff = [k for k in identity if old.get(k) != identity[k]]
            raise AttrilensError(f"{out} holds an index built with different {', '.join(diff)}. Use another --out, "
                                 "or delete that directory to rebuild.")
        if manifest.get("complete"):
            return TrainingIndex.open(out, lm, model_dir=model_dir)
    if manifest is None:
        manifest = {**identity, "model_dir": str(model_dir) if model_dir else None, "stage": "features",
                    "shards": [], "raw_shards": [], "complete": False}
    if not (out / "corpus.parquet").is_file():
        blocks.to_parquet(out / "corpus.parquet")
    t0 = time.perf_counter()
    if config.method == "bm25":
        manifest.update(dim=0, complete=True, build_seconds=round(time.perf_counter() - t0, 3))
        _write_json(mpath, manifest)
        return TrainingIndex.open(out, lm)

    gm = GradientMethod(config, lm, model_dir)
    manifest.update(dim=gm.dim, block_dim=gm.block_dim, n_blocks_per_example=gm.n_blocks,
                    layers=gm.layer_slices, checkpoints=gm.checkpoints, aggregate=config.aggregate)
    names = [blocks.block_id(i) for i in range(len(blocks))]
    starts = list(range(0, len(blocks), shard_size))
    raw_dir, shard_dir = out / "raw", out / "shards"
    shard_dir.mkdir(exist_ok=True)

    def featurise_shards(key: str, folder: Path, fn, desc: str) -> None:
        folder.mkdir(exist_ok=True)
        done = {s["start"]: s for s in manifest[key]}
        for s in done.values():  # a finished shard must still be what the manifest recorded
            p = out / s["file"]
            if not p.is_file() or _sha256(p) != s["sha256"]:
                raise AttrilensError(f"Shard {p} is missing or changed since it was written. Delete {out} and rebuild.")
        bar = _progress(len(blocks), desc, progress)
        bar.update(sum(s["rows"] for s in done.values()))
        for i, start in enumerate(starts):
            if start in done:
                continue
            rows = range(start, min(start + shard_size, len(blocks)))
            arr = fn(rows)
            path = folder / f"shard-{i:05d}.npy"
            sha = _atomic_save(path, arr)
            manifest[key].append({"file": str(path.relative_to(out)), "start": start, "rows": len(rows), "sha256": sha})
            _write_json(mpath, manifest)
            bar.update(len(rows))
        bar.close()

    def raw_rows(rows: range) -> torch.Tensor:
        examples = [Example.block(blocks.tokens[r], names[r]) for r in rows]
        return gm.raw(examples)

    if gm.needs_fit:
        pre = out / "preconditioner.safetensors"
        if manifest["stage"] == "features":
            featurise_shards("raw_shards", raw_dir, lambda rows: raw_rows(rows).numpy().astype(np.float32),
                             f"featurise {config.method}")
            ordered = sorted(manifest["raw_shards"], key=lambda s: s["start"])
            train_raw = torch.from_numpy(np.concatenate([np.load(out / s["file"]) for s in ordered]))
            eval_raw = gm.raw(_eval_examples(lm, eval_queries)) if eval_queries else None
            gm.fit(train_raw, eval_raw)
            _save_tensors(pre, gm.state())
            manifest["stage"] = "finish"
            manifest["lambda"], manifest["lambda_k"] = gm.whitening.lam, gm.whitening.k
            _write_json(mpath, manifest)
        else:
            gm.load_state(_load_tensors(pre))
        if manifest["stage"] == "finish":
            raw_files = {s["start"]: out / s["file"] for s in manifest["raw_shards"]}
            featurise_shards("shards", shard_dir, lambda rows: _to_dtype(
                gm.finish(torch.from_numpy(np.load(raw_files[rows.start]))), dtype, [names[r] for r in rows]),
                "apply R^-1/2")
            manifest["stage"], manifest["raw_shards"] = "finished", []
            _write_json(mpath, manifest)
        for p in raw_dir.glob("*.npy*"):
            p.unlink()
        if raw_dir.is_dir():
            raw_dir.rmdir()
    else:
        featurise_shards("shards", shard_dir, lambda rows: _to_dtype(gm.finish(raw_rows(rows)), dtype,
                                                                     [names[r] for r in rows]),
                         f"featurise {config.method}")
    if config.method == "datainf":
        idx = TrainingIndex(out, manifest, blocks, lm, None)
        sq = idx._layer_sq_norms(gm.datainf_groups())
        from attrilens.training.preconditioning import datainf_lambdas

        gm.datainf_lambdas = datainf_lambdas(sq, [b - a for a, b in gm.datainf_groups()], config.datainf_scale)
        _save_tensors(out / "preconditioner.safetensors", gm.state())
    if use_faiss:
        _build_faiss(out, manifest)
    manifest["stage"] = "done"
    manifest["complete"] = True
    manifest["build_seconds"] = round(manifest.get("build_seconds", 0.0) + time.perf_counter() - t0, 3)
    manifest["bytes_per_example"] = gm.dim * (2 if dtype == "float16" else 4)
    _write_json(mpath, manifest)
    return TrainingIndex.open(out, lm, model_dir=model_dir)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    _atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else {}


def _build_faiss(out: Path, manifest: dict) -> None:
    import faiss

    if manifest.get("n_blocks_per_example", 1) != 1 or manifest["method"] == "datainf":
        raise AttrilensError("FAISS search supports single-checkpoint dot-product methods (trackstar, grad-dot, "
                             "grad-cos). Build without --faiss.")
    index = faiss.IndexFlatIP(manifest["dim"])
    for s in sorted(manifest["shards"], key=lambda s: s["start"]):
        index.add(np.load(out / s["file"]).astype(np.float32))
    _atomic_write(out / "faiss.index", lambda tmp: faiss.write_index(index, str(tmp)))
    manifest["faiss"] = "faiss.index"


# ---------------------------------------------------------------------- search
def aggregate_checkpoints(per: torch.Tensor, how: str) -> torch.Tensor:
    """Scores [N, checkpoints] → [N]: mean, or median (of an even count: the mean of the two middle values)."""
    if per.shape[1] == 1:
        return per[:, 0]
    return per.mean(1) if how == "mean" else per.quantile(0.5, dim=1)


def topk_merge(scores_iter, n_total: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k and bottom-k over streamed (row offset, scores) blocks: per-block selection, then a merge."""
    best_i, best_s, worst_i, worst_s = [], [], [], []
    for offset, s in scores_iter:
        kk = min(k, len(s))
        if kk == 0:
            continue
        top = np.argpartition(-s, kk - 1)[:kk]
        bot = np.argpartition(s, kk - 1)[:kk]
        best_i.append(top + offset)
        best_s.append(s[top])
        worst_i.append(bot + offset)
        worst_s.append(s[bot])
    if not best_i:
        e = np.zeros(0)
        return e.astype(int), e, e.astype(int), e
    bi, bs, wi, ws = (np.concatenate(x) for x in (best_i, best_s, worst_i, worst_s))
    o = np.lexsort((bi, -bs))[:k]
    w = np.lexsort((wi, ws))[:k]
    return bi[o], bs[o], wi[w], ws[w]


def iter_chunks(shards: Sequence[tuple[int, np.ndarray]], rows: int = 16384, *, keep_dtype: bool = False):
    """Stream (row offset, tensor) blocks of memory-mapped shards [(first row, array)], fp32 unless keep_dtype."""
    for start, arr in shards:
        for a in range(0, arr.shape[0], rows):
            x = torch.from_numpy(arr[a : a + rows])  # copy-on-write memmap: no copy until converted
            yield start + a, (x if keep_dtype else x.float())


def dot_stream(shards: Sequence[tuple[int, np.ndarray]], q: torch.Tensor, *, bounded: bool = False, rows: int = 16384):
    """(offset, x·q) per block. fp16 shards with |score| ≤ 1 (unit-norm features) multiply in fp16 directly
    (fp32 accumulation, ~1e-4 absolute rounding of the scores), which reads each byte once; otherwise fp32."""
    half = bounded and all(a.dtype == np.float16 for _, a in shards)
    qq = q.half() if half else q.float()
    for o, x in iter_chunks(shards, rows, keep_dtype=half):
        yield o, (x @ qq).float().numpy()


def search_dot(shards: Sequence[tuple[int, np.ndarray]], q: torch.Tensor, k: int, *, bounded: bool = False,
               rows: int = 16384):
    """Exact blocked top-k / bottom-k of x·q over memory-mapped shards (top-k per block, then merge)."""
    n = sum(a.shape[0] for _, a in shards)
    return topk_merge(dot_stream(shards, q, bounded=bounded, rows=rows), n, k)


class TrainingIndex:
    """An opened index: memory-mapped shards, the corpus, and the method needed to featurise queries."""

    def __init__(self, path: Path, manifest: dict, corpus: Corpus, lm: LM, method: GradientMethod | None,
                 bm25: BM25Retriever | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.corpus = corpus
        self.lm = lm
        self.method = method
        self.bm25 = bm25
        self.shards = []
        for s in sorted(manifest.get("shards", []), key=lambda s: s["start"]):
            p = self.path / s["file"]
            if not p.is_file():
                raise AttrilensError(f"Shard {p} is missing. Rebuild the index.")
            arr = np.load(p, mmap_mode="c")
            if arr.shape != (s["rows"], manifest["dim"]):
                raise AttrilensError(f"Shard {p} has shape {arr.shape}, the manifest says "
                                     f"({s['rows']}, {manifest['dim']}). Rebuild the index.")
            self.shards.append((s["start"], arr))

    @property
    def method_name(self) -> str:
        return self.manifest["method"]

    def __len__(self) -> int:
        return len(self.corpus)

    @classmethod
    def open(cls, path: Path | str, lm: LM, *, corpus: Path | str | Sequence[dict] | None = None,
             model_dir: Path | str | None = None) -> TrainingIndex:
        """Open an index for querying with `lm`; errors if it was built with another model or (when given) corpus."""
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise AttrilensError(f"{path} is not an attrilens index (no manifest.json). Build one with "
                                 "`attrilens index build`.")
        manifest = json.loads(mpath.read_text())
        if manifest.get("schema") != INDEX_SCHEMA:
            raise AttrilensError(f"{path} has index schema {manifest.get('schema')!r}, expected {INDEX_SCHEMA!r}. Rebuild it.")
        if not manifest.get("complete"):
            raise AttrilensError(f"The index in {path} is incomplete (its build was interrupted). Rerun the same "
                                 "`attrilens index build` command to finish it.")
        fp = lm.fingerprint()
        if manifest["model"]["fingerprint"] != fp:
            raise AttrilensError(f"The index in {path} was built with another model ({manifest['model']['name']}, "
                                 f"fingerprint {manifest['model']['fingerprint'][:12]}) than the one given "
                                 f"({lm.name}, {fp[:12]}). Query it with that model, or rebuild the index.")
        blocks = Corpus.from_parquet(path / "corpus.parquet")
        if blocks.fingerprint != manifest["corpus"]["fingerprint"]:
            raise AttrilensError(f"{path}/corpus.parquet does not match the manifest. Rebuild the index.")
        if corpus is not None:
            docs = read_documents(Path(corpus)) if isinstance(corpus, (str, Path)) else list(corpus)
            given = make_corpus(docs, lm.tokenizer, block_len=blocks.block_len).fingerprint
            if given != blocks.fingerprint:
                raise AttrilensError(f"The corpus has changed since the index in {path} was built (fingerprint "
                                     f"{given[:12]} vs {blocks.fingerprint[:12]}). Rebuild the index for this corpus.")
        if manifest["method"] == "bm25":
            return cls(path, manifest, blocks, lm, None, BM25Retriever(blocks.texts))
        config = MethodConfig(**{**manifest["settings"], "batch_size": 16})
        mdir = Path(model_dir) if model_dir is not None else _default_model_dir(lm)
        if mdir is None and manifest.get("model_dir") and Path(manifest["model_dir"]).is_dir():
            mdir = Path(manifest["model_dir"])
        gm = GradientMethod(config, lm, mdir)
        gm.load_state(_load_tensors(path / "preconditioner.safetensors"))
        if gm.dim != manifest["dim"]:
            raise AttrilensError(f"The method gives {gm.dim} features but the index holds {manifest['dim']}. Rebuild it.")
        return cls(path, manifest, blocks, lm, gm)

    # ------------------------------------------------------------------ scoring
    def _chunks(self, rows: int = 16384):
        return iter_chunks(self.shards, rows)

    def _layer_sq_norms(self, groups: list[tuple[int, int]]) -> torch.Tensor:
        out = []
        for _, x in self._chunks():
            out.append(torch.stack([x[:, a:b].double().pow(2).sum(1) for a, b in groups], dim=1))
        return torch.cat(out)

    def score_stream(self, q: torch.Tensor):
        """Yield (row offset, scores) over the shards for a finished query vector."""
        m = self.manifest
        if m["method"] == "datainf":
            yield from self._datainf_stream(q)
            return
        nb, bd = m.get("n_blocks_per_example", 1), m.get("block_dim", m["dim"])
        q = q.float()
        if nb == 1:
            settings = m["settings"]
            bounded = m["method"] == "grad-cos" or (m["method"] == "trackstar" and settings.get("unit_norm", True))
            yield from dot_stream(self.shards, q, bounded=bounded)
            return
        for offset, x in self._chunks():
            per = torch.stack([x[:, c * bd : (c + 1) * bd] @ q[c * bd : (c + 1) * bd] for c in range(nb)], dim=1)
            yield offset, aggregate_checkpoints(per, m.get("aggregate", "mean")).numpy()

    def _datainf_stream(self, q: torch.Tensor):
        """DataInf per checkpoint (one closed-form r per LoRA layer), then mean or median over checkpoints."""
        groups = self.method.datainf_groups()
        lam = self.method.datainf_lambdas
        n = len(self)
        bd, nb = self.method.block_dim, self.method.n_blocks
        acc = [torch.zeros(b - a, dtype=torch.float64) for a, b in groups]
        for _, x in self._chunks():
            for j, (a, b) in enumerate(groups):
                g = x[:, a:b].double()
                c = (g @ q[a:b].double()) / (lam[j] + g.pow(2).sum(1))
                acc[j] += c @ g
        rs = [(n * q[a:b].double() - acc[j]) / (n * lam[j]) for j, (a, b) in enumerate(groups)]
        for offset, x in self._chunks():
            per = torch.zeros(x.shape[0], nb, dtype=torch.float64)
            for (a, b), r in zip(groups, rs, strict=True):
                per[:, a // bd] += x[:, a:b].double() @ r
            yield offset, aggregate_checkpoints(per, self.manifest.get("aggregate", "mean")).float().numpy()

    def query_vector(self, example: Example) -> torch.Tensor:
        return self.method.query(example)

    def scores(self, example: Example | str) -> np.ndarray:
        """Scores of every block for one query (an Example, or query text for BM25)."""
        if self.bm25 is not None:
            return self.bm25.scores(example).numpy()
        q = self.query_vector(example)
        return np.concatenate([s for _, s in self.score_stream(q)])

    def _faiss_search(self, q: np.ndarray, k: int):
        import faiss

        index = faiss.read_index(str(self.path / self.manifest["faiss"]))
        s, i = index.search(q[None].astype(np.float32), k)
        s2, i2 = index.search(-q[None].astype(np.float32), k)
        return i[0], s[0], i2[0], -s2[0]

    # ------------------------------------------------------------------ trace
    def trace(self, prompt: str, target: str | None = None, generate: bool = False, tokens: Sequence[int] | None = None,
              top_k: int = 10, *, span: tuple[int, int] | None = None, neighbours: bool = False,
              use_faiss: bool = False, max_new_tokens: int = 24) -> TraceResult:
        """Top-k proponents and opponents of the response (target, or generated) among the training blocks."""
        cost = Cost()
        t0 = time.perf_counter()
        if not prompt or not prompt.strip():
            raise AttrilensError("The query prompt is empty. Pass a non-empty prompt.")
        if (target is None) == (not generate):
            raise AttrilensError("Pass exactly one of a target response or generate=True (--target T or --generate).")
        if top_k < 1:
            raise AttrilensError(f"top_k must be at least 1, got {top_k}.")
        if generate:
            target = self.lm.generate(prompt, max_new_tokens=max_new_tokens)
            if not target:
                raise AttrilensError("The model generated an empty response. Pass --target instead.")
        if not target:
            raise AttrilensError("The target is empty. Pass a non-empty target response.")
        prompt_ids = self.lm.encode_prompt(prompt)
        try:
            response_ids = self.lm.encode_response(target)
        except AttrilensError as exc:
            raise AttrilensError(f"The target cannot be tokenised as given: {exc}") from None
        if span is not None:
            tokens = _span_tokens(self.lm, response_ids, target, span)
        chosen = list(tokens) if tokens is not None else None
        n = len(self)
        if self.bm25 is not None:
            text = target if chosen is None else self.lm.tokenizer.decode([response_ids[t] for t in chosen])
            s = self.bm25.scores(bm25_query_text(prompt, text)).numpy()
            bi, bs, _, _ = topk_merge([(0, s)], n, min(top_k, n))
            wi, ws = np.zeros(0, int), np.zeros(0)  # BM25 has no notion of opposing evidence
        else:
            ex = Example.response(prompt_ids, response_ids, chosen, name="query")
            q = self.query_vector(ex)
            cost.add(forward_passes=self.method.n_blocks, tokens=len(ex.ids) * self.method.n_blocks)
            if use_faiss:
                if "faiss" not in self.manifest:
                    raise AttrilensError("This index has no FAISS index. Rebuild with --faiss, or search without it.")
                bi, bs, wi, ws = self._faiss_search(q.numpy(), min(top_k, n))
            else:
                bi, bs, wi, ws = topk_merge(self.score_stream(q), n, min(top_k, n))
        cost.seconds = time.perf_counter() - t0
        cost.extra["examples_scored"] = n
        return TraceResult(self.method_name, prompt, target, chosen, self._rows(bi, bs, neighbours),
                           self._rows(wi, ws, neighbours), cost)

    def _rows(self, idx, scores, neighbours: bool) -> list[dict]:
        out = []
        for rank, (i, s) in enumerate(zip(idx.tolist(), scores.tolist(), strict=True), 1):
            row = {"rank": rank, "id": self.corpus.docs[i], "block": int(self.corpus.blocks[i]),
                   "text": self.corpus.texts[i], "score": float(s)}
            if neighbours:
                row["neighbours"] = self.corpus.neighbours(i)
            out.append(row)
        return out


def _span_tokens(lm: LM, response_ids: list[int], text: str, span: tuple[int, int]) -> list[int]:
    """Indices of the response tokens that overlap the character span [start, end) of the response text."""
    start, end = span
    if not 0 <= start < end <= len(text):
        raise AttrilensError(f"Character span {span} is not inside the {len(text)}-character response. "
                             "Pass 0 <= start < end <= len(response).")
    out, pos = [], 0
    for t in range(len(response_ids)):
        nxt = len(lm.tokenizer.decode(response_ids[: t + 1], clean_up_tokenization_spaces=False))
        if pos < end and nxt > start:
            out.append(t)
        pos = nxt
    return out
