"""On-disk storage of a training-data index: the manifest, atomic shard/JSON/tensor writes, resumable shards.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.errors import AttrilensError

INDEX_SCHEMA = "attrilens/training-index/v3"  # v3: {"method", "options"} (the method's own options dataclass)
FP16_MAX = 65504.0
MANIFEST = "manifest.json"
PRECONDITIONER = "preconditioner.safetensors"

Shards = list[tuple[int, np.ndarray]]  # (first row, memory-mapped [rows, dim] array), in row order


def write_array(f, array: np.ndarray) -> None:
    """Write one array in .npy format to an open binary file (the one place that writes shard bytes)."""
    np.lib.format.write_array(f, array, allow_pickle=False)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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


def atomic_save(path: Path, array: np.ndarray) -> str:
    """Write `array` to `path` as .npy atomically (see `atomic_write`); return the file's sha256."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write_array(f, np.ascontiguousarray(array))

    atomic_write(path, write)
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (how the manifest recognises a finished shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: dict) -> None:
    """Write a JSON document atomically (the manifest after every shard)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors as safetensors atomically (a method's fitted state)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Named tensors of a safetensors file; {} when there is none (a method without fitted state)."""
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else {}


def to_dtype(x: torch.Tensor, dtype: str, names: Sequence[str]) -> np.ndarray:
    """Features as the shard dtype; float16 overflow is an error naming the first example that overflows."""
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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a complete index of this schema; anything else is an error saying how to fix it."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise AttrilensError(f"{path} is not an attrilens index (no manifest.json). Build one with "
                             "`attrilens index build`.")
    manifest = json.loads(mpath.read_text())
    if manifest.get("schema") != INDEX_SCHEMA:
        raise AttrilensError(f"{path} has index schema {manifest.get('schema')!r}, expected {INDEX_SCHEMA!r}. Rebuild it.")
    if not manifest.get("complete"):
        raise AttrilensError(f"The index in {path} is incomplete (its build was interrupted). Rerun the same "
                             "`attrilens index build` command to finish it.")
    return manifest


def write_shards(out: Path, manifest: dict, key: str, folder: Path, n_rows: int, shard_size: int,
                 make: Callable[[range], np.ndarray], *, desc: str, progress: bool) -> None:
    """Write the shards listed under manifest[key] that are not finished yet (resume), one atomic file each.

    `make(rows)` gives the array of a row range. A finished shard must still be what the manifest recorded.
    """
    folder.mkdir(exist_ok=True)
    done = {s["start"]: s for s in manifest[key]}
    for s in done.values():
        p = out / s["file"]
        if not p.is_file() or sha256_file(p) != s["sha256"]:
            raise AttrilensError(f"Shard {p} is missing or changed since it was written. Delete {out} and rebuild.")
    bar = _progress(n_rows, desc, progress)
    bar.update(sum(s["rows"] for s in done.values()))
    for i, start in enumerate(range(0, n_rows, shard_size)):
        if start in done:
            continue
        rows = range(start, min(start + shard_size, n_rows))
        path = folder / f"shard-{i:05d}.npy"
        sha = atomic_save(path, make(rows))
        manifest[key].append({"file": str(path.relative_to(out)), "start": start, "rows": len(rows), "sha256": sha})
        write_json(out / MANIFEST, manifest)
        bar.update(len(rows))
    bar.close()


def open_shards(path: Path, manifest: dict) -> Shards:
    """Memory-map the finished feature shards in row order, checking each one's shape against the manifest."""
    shards = []
    for s in sorted(manifest.get("shards", []), key=lambda s: s["start"]):
        p = path / s["file"]
        if not p.is_file():
            raise AttrilensError(f"Shard {p} is missing. Rebuild the index.")
        arr = np.load(p, mmap_mode="c")
        if arr.shape != (s["rows"], manifest["dim"]):
            raise AttrilensError(f"Shard {p} has shape {arr.shape}, the manifest says "
                                 f"({s['rows']}, {manifest['dim']}). Rebuild the index.")
        shards.append((s["start"], arr))
    return shards


def remove_folder(folder: Path) -> None:
    """Delete a folder of shard files (the raw features once the stored ones are written)."""
    for p in folder.glob("*.npy*"):
        p.unlink()
    if folder.is_dir():
        folder.rmdir()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, mininterval=1.0, dynamic_ncols=True)
