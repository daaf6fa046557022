"""What a converted cache entry records about itself (`METADATA`: every file's SHA-256, size and mtime) and how
an entry is checked against it: fast (sizes and mtimes), changed files re-hashed, or every file re-hashed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from attrilens.models.registry import RealModel

METADATA = "attrilens-model.json"
_FORMAT = 1
CHUNK = 1 << 20


def sha256_file(p: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_entry(model: RealModel, directory: Path, mode: str) -> tuple[str, str]:
    """("ok" | "missing" | "stale" | "corrupt", reason) for a cache entry.

    mode "fast": metadata, sizes and mtimes only ("stale" when an mtime changed); "changed": also hash the
    files whose mtime changed; "full": hash every file. A file whose mtime changed but whose hash still
    matches is fine: its new mtime is recorded.
    """
    if not directory.exists():
        return "missing", "not converted yet"
    meta_path = directory / METADATA
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
        records = [(rel, int(rec["size"]), int(rec["mtime_ns"]), str(rec["sha256"])) for rel, rec in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return "corrupt", f"no readable {METADATA}: {type(exc).__name__}"
    if (meta.get("format") != _FORMAT or meta.get("name") != model.name
            or meta.get("gguf_sha256") != model.sha256 or not records):
        return "corrupt", f"{METADATA} does not describe {model.name} from GGUF {model.sha256[:12]}..."
    to_hash = []
    for rel, size, mtime_ns, _ in records:
        p = directory / rel
        try:
            st = p.stat()
        except OSError:
            return "corrupt", f"{rel} is missing"
        if st.st_size != size:
            return "corrupt", f"{rel} has {st.st_size} bytes, expected {size}"
        if mode == "full" or st.st_mtime_ns != mtime_ns:
            to_hash.append((rel, p, st.st_mtime_ns))
    if not to_hash:
        return "ok", ""
    if mode == "fast":
        return "stale", "file mtimes changed"
    expected = {rel: sha for rel, _, _, sha in records}
    for rel, p, mtime_ns in to_hash:
        if sha256_file(p) != expected[rel]:
            return "corrupt", f"{rel} no longer matches its SHA-256"
        files[rel]["mtime_ns"] = mtime_ns
    with contextlib.suppress(OSError):  # a read-only cache still works, it just re-hashes next time
        _write_json(meta_path, meta)
    return "ok", ""


def _write_json(p: Path, data: dict) -> None:
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, p)


def write_metadata(model: RealModel, directory: Path, info: dict) -> None:
    """Hash every file of the converted directory, then write the metadata file (last)."""
    import torch
    import transformers

    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != METADATA:
            st = p.stat()
            files[p.relative_to(directory).as_posix()] = {
                "sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            }
    meta = {
        "format": _FORMAT,
        "name": model.name,
        "description": model.description,
        "packages": list(model.packages),
        "gguf_file": model.gguf_file,
        "gguf_sha256": model.sha256,
        "gguf_size": model.gguf_size,
        "licence": model.licence,
        "weights": f"dequantised from {model.quant} GGUF, not the original checkpoint",
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
        "files": files,
    }
    _write_json(directory / METADATA, meta)
