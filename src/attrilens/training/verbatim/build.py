"""`write_verbatim_index`: the corpus tokenised with the model's tokenizer, in infini-gram's on-disk format, plus
the document table that maps a hit back to a document id and its text.

Layout of a verbatim index directory:
    manifest.json          schema, "method": "verbatim", tokenizer and corpus fingerprints, counts, every file's
                           bytes and sha256; written after every stage, "complete": true only at the very end
    engine/tokenized.0     u16 token ids, each document preceded by the separator 0xffff (infini-gram v4, one
                           shard); a vocabulary of more than 65535 entries (Gemma-3: 262144) is stored through
                           a dense map of the ids the corpus uses (see `token-map.npy`)
    engine/offset.0        u64 byte offset of each document's separator in tokenized.0
    engine/table.0         the suffix array (built by infini-gram's `rust_indexing`)
    documents.jsonl        {"id", "text"}, one line per document, in index order
    documents-lines.npy    int64 byte offset of every line of documents.jsonl (n_documents + 1 entries)
    unigram.npy            int64 corpus count of every token id (the span rarity filter)
    token-map.npy          int64 tokenizer id of every stored id (the identity below 65536 entries)

infini-gram's own tokenisation step loads its named tokenizers from the hub, so this module writes the token
files itself (exactly the format of `infini_gram/indexing.py`) and runs only the suffix-array builder. The
build has two stages (tokenise, suffix array); each writes temporary files and renames them when done, and the
manifest records finished stages with checksums: a killed build leaves nothing that reads as complete, and
rerunning it reuses a finished stage and redoes the unfinished one.

Why always u16: infini-gram's `rust_indexing make-part --token-width 4` sizes a bucket table by the largest
token value read big-endian, and the u32 separator 0xffffffff makes that 2^32 × 8 bytes = 32 GiB of memory per
part. Stored ids are therefore dense ranks of the tokens that occur (at most 65534 distinct tokens per corpus
for a large vocabulary; more is a one-line error). Matching is by equality only, so spans, counts and positions
are those of the tokenizer's ids.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attrilens.errors import AttrilensError, check_output_dir
from attrilens.lm import LM
from attrilens.training.corpus import read_documents
from attrilens.training.store import INDEX_SCHEMA, MANIFEST, build_lock, file_record, sha256_file, write_json

ENGINE_DIR = "engine"
TOKENS, OFFSETS, TABLE = f"{ENGINE_DIR}/tokenized.0", f"{ENGINE_DIR}/offset.0", f"{ENGINE_DIR}/table.0"
DOCUMENTS, DOCUMENT_LINES, UNIGRAM = "documents.jsonl", "documents-lines.npy", "unigram.npy"
TOKEN_MAP = "token-map.npy"
STAGE_FILES = {"tokenized": (TOKENS, OFFSETS, DOCUMENTS, DOCUMENT_LINES, UNIGRAM, TOKEN_MAP), "done": (TABLE,)}
SEPARATOR = 0xFFFF  # infini-gram's document separator for u16 tokens
CHUNK = 1 << 24  # tokens per block when remapping a large vocabulary
HACK = 100_000  # bytes by which infini-gram's suffix-array parts overlap (its indexing.py constant)
BATCH = 1024  # documents per tokenizer call


def infini_gram_dir() -> Path:
    """The installed infini_gram package folder (engine and `rust_indexing`); missing → how to install it."""
    try:
        import infini_gram
    except ImportError:
        raise AttrilensError("Verbatim tracing needs the infini-gram package. Install it with "
                             "`pip install 'attrilens[verbatim]'`.") from None
    return Path(infini_gram.__file__).resolve().parent


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the fast tokenizer's definition (vocabulary, merges, normaliser,
    pre-tokeniser) or, for a slow one, its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for k in ("truncation", "padding"):  # runtime settings, not the tokenisation
            spec.pop(k, None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                           sorted(map(str, tokenizer.all_special_tokens))])
    return hashlib.sha256(blob.encode()).hexdigest()


def remapped(tokenizer) -> bool:
    """Whether token ids are stored through a dense map: the vocabulary has ids ≥ 0xffff (the separator)."""
    return len(tokenizer) > SEPARATOR


def corpus_fingerprint(docs: Sequence[dict]) -> str:
    """sha256 of the documents' ids and texts, in order."""
    h = hashlib.sha256(b"verbatim-corpus\n")
    for d in docs:
        h.update(json.dumps([d["id"], d["text"]], ensure_ascii=False).encode())
    return h.hexdigest()


def _documents(corpus, text_field: str = "text", id_field: str = "id") -> list[dict]:
    if isinstance(corpus, (str, Path)):
        return read_documents(Path(corpus), text_field=text_field, id_field=id_field)
    docs = list(corpus)
    if not docs:
        raise AttrilensError("The corpus is empty. Pass at least one document.")
    seen: set[str] = set()
    out = []
    for k, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("text"), str) or not d["text"].strip():
            raise AttrilensError(f"Document {k} has no text. Give every document a non-empty \"text\" string.")
        doc_id = str(d.get("id", f"doc-{k}"))
        if doc_id in seen:
            raise AttrilensError(f"Document id {doc_id!r} occurs twice. Give every document a unique id.")
        seen.add(doc_id)
        out.append({"id": doc_id, "text": d["text"]})
    return out


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk(out: Path, need: int, what: str) -> None:
    """Refuse to start a stage that would not fit: the message says how much it needs and how much is free."""
    free = shutil.disk_usage(out).free
    if need > free:
        raise AttrilensError(f"{what} needs about {_gb(need)} in {out}, which has {_gb(free)} free. Free some "
                             "space, or pass another --out on a larger disk.")


def _pointer_bytes(ds_size: int) -> int:
    """Bytes per suffix-array entry, as infini-gram computes it."""
    return max(1, math.ceil(math.log2(max(ds_size, 2)) / 8))


def _estimate_bytes(text_bytes: int, n_docs: int, width: int) -> int:
    """Disk a build needs at most: text copy + tokens (≤ one per 2 bytes of text, a generous bound for BPE) +
    suffix array written three times while it is built (parts, merged runs, table)."""
    tokens = text_bytes // 2 + n_docs
    ds = (tokens + n_docs) * width
    return int(1.1 * text_bytes) + ds + 16 * n_docs + 3 * tokens * _pointer_bytes(ds)


def _stage_intact(out: Path, manifest: dict, stage: str) -> bool:
    """Whether every file of a finished stage is still the one the manifest recorded (size and checksum)."""
    files = manifest.get("files", {})
    for rel in STAGE_FILES[stage]:
        rec, p = files.get(rel), out / rel
        if rec is None or not p.is_file() or p.stat().st_size != rec["bytes"] or sha256_file(p) != rec["sha256"]:
            return False
    return True


def _finish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _tokenize(lm: LM, docs: list[dict], out: Path, progress: bool) -> dict[str, Any]:
    """Stage 1: token files, document table and unigram counts, each written to .tmp and renamed at the end."""
    from tqdm import tqdm

    tok = lm.tokenizer
    remap = remapped(tok)
    dtype = np.uint32 if remap else np.uint16  # the first pass writes the tokenizer's ids
    sep = np.array([np.iinfo(dtype).max], dtype=dtype).tobytes()
    (out / ENGINE_DIR).mkdir(exist_ok=True)
    tmp = {rel: out / (rel + ".tmp") for rel in STAGE_FILES["tokenized"]}
    raw = out / (TOKENS + ".raw.tmp") if remap else tmp[TOKENS]
    vocab = len(tok)
    counts = np.zeros(vocab, dtype=np.int64)
    doc_offsets = np.zeros(len(docs), dtype=np.uint64)  # in tokens until written
    line_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    pos = line = 0
    bar = tqdm(total=len(docs), desc="tokenise corpus", file=sys.stderr, disable=not progress, mininterval=1.0,
               dynamic_ncols=True)
    try:
        with open(raw, "wb") as ft, open(tmp[DOCUMENTS], "wb") as fd:
            for b in range(0, len(docs), BATCH):
                batch = docs[b:b + BATCH]
                enc = tok([d["text"] for d in batch], add_special_tokens=False)["input_ids"]
                for k, (d, ids) in enumerate(zip(batch, enc, strict=True)):
                    arr = np.asarray(ids, dtype=np.int64)
                    if arr.size and (arr.min() < 0 or arr.max() >= min(vocab, np.iinfo(dtype).max)):
                        raise AttrilensError(f"Document {d['id']!r} tokenises to id {int(arr.max())}, outside the "
                                             f"tokenizer's {vocab} entries. Check the model's tokenizer files.")
                    counts += np.bincount(arr, minlength=vocab)[:vocab]
                    doc_offsets[b + k] = pos
                    ft.write(sep + arr.astype(dtype).tobytes())
                    pos += 1 + arr.size
                    row = (json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n").encode()
                    fd.write(row)
                    line += len(row)
                    line_offsets[b + k + 1] = line
                bar.update(len(batch))
        bar.close()
        used = _dense_ids(raw, tmp[TOKENS], counts) if remap else np.arange(vocab, dtype=np.int64)
        with open(tmp[OFFSETS], "wb") as f:
            f.write((doc_offsets * np.uint64(2)).tobytes())  # byte offsets into the u16 file
        for rel, arr in ((DOCUMENT_LINES, line_offsets), (UNIGRAM, counts), (TOKEN_MAP, used)):
            with open(tmp[rel], "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
        for rel, p in tmp.items():
            _finish(p, out / rel)
    finally:
        for p in [*tmp.values(), raw]:
            p.unlink(missing_ok=True)
    return {"n_tokens": int(counts.sum()), "ds_bytes": 2 * pos, "distinct_tokens": int((counts > 0).sum())}


def _dense_ids(raw: Path, dest: Path, counts: np.ndarray) -> np.ndarray:
    """Rewrite u32 tokenizer ids (separator 0xffffffff) as u16 dense ids of the tokens used (separator 0xffff);
    return the tokenizer id of every dense id."""
    used = np.nonzero(counts)[0]
    if len(used) >= SEPARATOR:
        raise AttrilensError(f"The corpus uses {len(used)} distinct tokens; a verbatim index stores at most "
                             f"{SEPARATOR - 1} (infini-gram's u32 suffix-array builder needs 32 GiB per part). "
                             "Split the corpus into several indexes.")
    lut = np.full(len(counts), len(used), dtype=np.uint16)  # an id no stored token has: never matches
    lut[used] = np.arange(len(used), dtype=np.uint16)
    src = np.memmap(raw, dtype=np.uint32, mode="r")
    with open(dest, "wb") as f:
        for a in range(0, len(src), CHUNK):
            x = np.asarray(src[a:a + CHUNK])
            y = np.full(len(x), SEPARATOR, dtype=np.uint16)
            keep = x != np.iinfo(np.uint32).max
            y[keep] = lut[x[keep]]
            f.write(y.tobytes())
    del src
    return used.astype(np.int64)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise AttrilensError(f"infini-gram's suffix-array builder failed in {what} (exit {proc.returncode}: "
                             f"{tail[0][:160]}). Rerun the same build to retry.")


def _suffix_array(out: Path, width: int, progress: bool) -> None:
    """Stage 2: infini-gram's `rust_indexing` make-part / merge / concat (its indexing.py recipe, one shard),
    in out/.build, the table renamed into place when whole."""
    binary = str(infini_gram_dir() / "rust_indexing")
    ds_path = out / TOKENS
    ds_size = ds_path.stat().st_size
    ratio = _pointer_bytes(ds_size)
    check_disk(out, 3 * (ds_size // width) * ratio, "Building the suffix array")
    work = out / ".build"
    shutil.rmtree(work, ignore_errors=True)
    parts, merged = work / "parts", work / "merged"
    parts.mkdir(parents=True)
    merged.mkdir()
    # one thread for a small corpus: rust_indexing's concat panics when a thread's share of the table is tiny
    cpus = max(1, min(os.cpu_count() or 1, 8)) if ds_size >= (1 << 20) else 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
    except (ValueError, OSError):
        mem = 2 << 30
    batches = 1
    while batches * (max(mem, 1 << 28) // 8) < ds_size:
        batches *= 2
    jobs = 1 if ds_size < (4 << 20) else cpus
    total = batches * jobs
    size = ds_size // total
    size += (width - size % width) % width
    t0 = time.perf_counter()
    if progress:
        print(f"suffix array: {ds_size // width:,} tokens, {total} part(s)", file=sys.stderr)
    try:
        for start in range(0, total, jobs):
            procs = []
            for i in range(start, min(start + jobs, total)):
                s, e = i * size, min((i + 1) * size + HACK, ds_size)
                procs.append(subprocess.Popen(
                    [binary, "make-part", "--data-file", str(ds_path), "--parts-dir", str(parts), "--start-byte",
                     str(s), "--end-byte", str(e), "--ratio", str(ratio), "--token-width", str(width)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            for p in procs:
                _, err = p.communicate()
                if p.returncode != 0:
                    raise AttrilensError(f"infini-gram's suffix-array builder failed in make-part (exit "
                                         f"{p.returncode}: {(err or '').strip()[-160:]}). Rerun the same build.")
        _run([binary, "merge", "--data-file", str(ds_path), "--parts-dir", str(parts), "--merged-dir", str(merged),
              "--num-threads", str(cpus), "--hacksize", str(HACK), "--ratio", str(ratio), "--token-width",
              str(width)], "merge")
        shutil.rmtree(parts)
        table = work / "table.0"
        _run([binary, "concat", "--data-file", str(ds_path), "--merged-dir", str(merged), "--merged-file",
              str(table), "--num-threads", str(cpus), "--ratio", str(ratio), "--token-width", str(width)], "concat")
        if not table.is_file() or table.stat().st_size != (ds_size // width) * ratio:
            raise AttrilensError("infini-gram's suffix-array builder wrote a table of the wrong size. Rerun the "
                                 "same build; if it fails again, report it with the corpus size.")
        _finish(table, out / TABLE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(f"suffix array: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def write_verbatim_index(lm: LM, corpus, out: Path | str, *, progress: bool = True, text_field: str = "text",
                         id_field: str = "id") -> Path:
    """Write the files of a verbatim span-tracing index (infini-gram suffix array over the model's tokens) into
    `out` and return it; an unfinished build of the same corpus and tokenizer is resumed, a finished one is left
    as it is. A corpus path is any format `attrilens.corpus_formats` reads (fields `text_field`, `id_field`),
    read into memory. `build_verbatim_index` is this, then the index opened."""
    out = check_output_dir(Path(out))
    infini_gram_dir()  # the engine must be installed before any work
    docs = _documents(corpus, text_field, id_field)
    width = 2  # u16 engine tokens, see the module docstring
    identity = {"schema": INDEX_SCHEMA, "method": "verbatim",
                "tokenizer": {"fingerprint": tokenizer_fingerprint(lm.tokenizer), "class": type(lm.tokenizer).__name__,
                              "vocab": len(lm.tokenizer), "token_bytes": width,
                              "remapped": remapped(lm.tokenizer)},
                "corpus": {"fingerprint": corpus_fingerprint(docs), "n_documents": len(docs)}}
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out):
        mpath = out / MANIFEST
        manifest = None
        if mpath.is_file():
            try:
                manifest = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None  # a torn manifest of an unfinished build: start over
        if manifest is not None:
            old = {"schema": manifest.get("schema"), "method": manifest.get("method"),
                   "tokenizer": manifest.get("tokenizer"),
                   "corpus": {k: (manifest.get("corpus") or {}).get(k) for k in ("fingerprint", "n_documents")}}
            diff = [k for k in identity if old.get(k) != identity[k]]
            if diff:
                raise AttrilensError(f"{out} holds an index built with different settings ({', '.join(diff)}). Use "
                                     "another --out, or delete that directory to rebuild.")
            if manifest.get("complete"):
                return out
        if manifest is None:
            manifest = {**identity, "options": {}, "dtype": None, "engine": {"name": "infini-gram", "version": 4},
                        "model": {"name": lm.name}, "model_dir": lm.name if lm.name and Path(lm.name).is_dir() else None,
                        "chat_template": lm.use_chat_template, "stage": "start", "files": {}, "complete": False}
        if manifest.get("stage") not in ("tokenized",) or not _stage_intact(out, manifest, "tokenized"):
            text_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
            check_disk(out, _estimate_bytes(text_bytes, len(docs), 6 if remapped(lm.tokenizer) else width),
                       f"Indexing {len(docs)} documents ({_gb(text_bytes)} of text)")
            t1 = time.perf_counter()
            facts = _tokenize(lm, docs, out, progress)
            manifest["stage_seconds"] = {"tokenize": round(time.perf_counter() - t1, 3)}
            manifest["corpus"].update({"n_tokens": facts["n_tokens"], "text_bytes": text_bytes,
                                       "distinct_tokens": facts["distinct_tokens"]})
            manifest["files"] = {rel: file_record(out / rel) for rel in STAGE_FILES["tokenized"]}
            manifest["stage"] = "tokenized"
            write_json(mpath, manifest)
        t1 = time.perf_counter()
        _suffix_array(out, width, progress)
        manifest.setdefault("stage_seconds", {})["suffix_array"] = round(time.perf_counter() - t1, 3)
        manifest["files"].update({rel: file_record(out / rel) for rel in STAGE_FILES["done"]})
        manifest["stage"] = "done"
        manifest["bytes_per_token"] = round(sum(r["bytes"] for r in manifest["files"].values())
                                            / max(1, manifest["corpus"]["n_tokens"]), 3)
        manifest["build_seconds"] = round(manifest.get("build_seconds", 0.0) + time.perf_counter() - t0, 3)
        manifest["complete"] = True
        write_json(mpath, manifest)  # last: only now does the directory read as an index
    return out
