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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


def file_record(path: Path) -> dict[str, Any]:
    """A manifest's record of a file it trusts: its size and sha256 (checked before the file is loaded)."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_json(path: Path, obj: dict) -> None:
    """Write a JSON document atomically (the manifest after every shard)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors as safetensors atomically (a method's fitted state)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Named tensors of a safetensors file; {} when there is none (a method without fitted state); a truncated or
    foreign file is an error naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise AttrilensError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]}). The "
                             "index is damaged: rebuild it.") from None


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
    """The manifest of a complete index of this schema whose shard list covers its corpus; anything else is an
    error saying how to fix it."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise AttrilensError(f"{path} is not an attrilens index (no manifest.json). Build one with "
                             "`attrilens index build`.")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttrilensError(f"{mpath} is not valid JSON ({exc}). The index is damaged: rebuild it.") from None
    if not isinstance(manifest, dict):
        raise AttrilensError(f"{mpath} is not an index manifest (a JSON object). The index is damaged: rebuild it.")
    if manifest.get("schema") != INDEX_SCHEMA:
        raise AttrilensError(f"{path} has index schema {manifest.get('schema')!r}, expected {INDEX_SCHEMA!r}. Rebuild it.")
    if not manifest.get("complete"):
        raise AttrilensError(f"The index in {path} is incomplete (its build was interrupted). Rerun the same "
                             "`attrilens index build` command to finish it.")
    _check_shard_list(path, manifest)
    return manifest


def _check_shard_list(path: Path, manifest: dict) -> None:
    """The shards of an index that stores features must tile its corpus' blocks 0..n-1 exactly."""
    if manifest.get("dtype") is None:  # a method without stored features (BM25)
        return
    try:
        n_blocks = int(manifest["corpus"]["n_blocks"])
        dim = int(manifest["dim"])
        np.dtype(manifest["dtype"])
        spans = sorted((int(s["start"]), int(s["rows"]), str(s["file"]), str(s["sha256"])) for s in manifest["shards"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AttrilensError(f"{path / MANIFEST} lacks or garbles a field the index needs ({exc}). The index is "
                             "damaged: rebuild it.") from None
    covered = 0
    for start, rows, _, _ in spans:
        if start != covered or rows < 1:
            break
        covered += rows
    if covered != n_blocks or dim < 1:
        raise AttrilensError(f"The manifest of {path} lists shards for {covered} of its {n_blocks} blocks. The "
                             "index is damaged: rebuild it.")


def check_recorded_shards(out: Path, records: Sequence[dict]) -> None:
    """Every shard a resumed build's manifest lists must still be the file it wrote (its sha256)."""
    for s in records:
        p = out / s["file"]
        if not p.is_file() or sha256_file(p) != s["sha256"]:
            raise AttrilensError(f"Shard {p} is missing or changed since it was written. Delete {out} and rebuild.")


def write_shards(out: Path, records: list[dict], folder: Path, n_rows: int, shard_size: int,
                 make: Callable[[range, Callable[[int], None]], np.ndarray], *, commit: Callable[[], None], desc: str,
                 progress: bool) -> None:
    """Write the shards of rows 0..n_rows that `records` does not list yet (resume), one atomic file each, appending
    each one's record and calling `commit` (which writes the manifest) after it.

    `make(rows, advance)` gives the array of a row range and may call `advance(n)` as it goes (the progress bar
    moves within a shard). A finished shard must still be what its record says.
    """
    folder.mkdir(exist_ok=True)
    done = {s["start"]: s for s in records}
    check_recorded_shards(out, records)
    bar = _progress(n_rows, desc, progress)
    bar.update(sum(s["rows"] for s in done.values()))
    for i, start in enumerate(range(0, n_rows, shard_size)):
        if start in done:
            continue
        rows = range(start, min(start + shard_size, n_rows))
        path = folder / f"shard-{i:05d}.npy"
        ticked = 0

        def advance(n: int) -> None:
            nonlocal ticked
            ticked += n
            bar.update(n)

        sha = atomic_save(path, make(rows, advance))
        bar.update(len(rows) - ticked)
        records.append({"file": str(path.relative_to(out)), "start": start, "rows": len(rows), "sha256": sha})
        commit()
    bar.close()


def open_shards(path: Path, manifest: dict, *, verify: bool | None = None) -> Shards:
    """Memory-map the finished feature shards in row order, after checking each one against the manifest: always
    its .npy header (dtype, shape) and byte size; its sha256 too when `verify` is True, or (None, the default)
    when the file is new or changed since it last verified (a cache keyed by size and mtime)."""
    dtype = np.dtype(manifest["dtype"]) if manifest.get("dtype") else None
    checked = _VerifiedCache(path)
    shards = []
    for s in sorted(manifest.get("shards", []), key=lambda s: s["start"]):
        p = path / s["file"]
        if not p.is_file():
            raise AttrilensError(f"Shard {p} is missing. Rebuild the index.")
        shape, stored, offset = npy_header(p)
        want = (s["rows"], manifest["dim"])
        if shape != want:
            raise AttrilensError(f"Shard {p} has shape {shape}, the manifest says {want}. Rebuild the index.")
        if dtype is not None and stored != dtype:
            raise AttrilensError(f"Shard {p} holds {stored} values, the index stores {dtype}. The shard is damaged: "
                                 "rebuild the index.")
        size, expected = p.stat().st_size, offset + stored.itemsize * want[0] * want[1]
        if size != expected:
            raise AttrilensError(f"Shard {p} is {size} bytes, {expected} expected (truncated or padded). The shard "
                                 "is damaged: rebuild the index.")
        if verify or (verify is None and not checked.fresh(p, s["sha256"])):
            if sha256_file(p) != s["sha256"]:
                raise AttrilensError(f"Shard {p} does not match the checksum in its manifest: it changed after the "
                                     "build. Rebuild the index.")
            checked.add(p, s["sha256"])
        shards.append((s["start"], np.load(p, mmap_mode="c", allow_pickle=False)))
    checked.save()
    return shards


def npy_header(p: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file from its header alone; a file that is no .npy is an error."""
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError, EOFError) as exc:
        raise AttrilensError(f"Shard {p} is not a readable .npy array ({exc}). The shard is damaged: rebuild the "
                             "index.") from None
    if fortran or dtype.hasobject:
        raise AttrilensError(f"Shard {p} holds {'objects' if dtype.hasobject else 'a Fortran-ordered array'}, not "
                             "the index's features. The shard is damaged: rebuild the index.")
    return tuple(shape), dtype, offset


class _VerifiedCache:
    """sha256 checks already passed, by (file, size, mtime): opening an unchanged index hashes nothing again.
    Kept in the user cache (never beside a shipped index); a cache that cannot be read or written is ignored."""

    def __init__(self, index: Path):
        from attrilens.models import cache_root

        key = hashlib.sha256(str(index.resolve()).encode()).hexdigest()[:24]
        self.file = cache_root() / "verified" / f"{key}.json"
        try:
            self.entries = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _entry(p: Path, sha: str) -> tuple[str, list]:
        st = p.stat()
        return f"{p.parent.name}/{p.name}", [st.st_size, st.st_mtime_ns, sha]

    def fresh(self, p: Path, sha: str) -> bool:
        key, stamp = self._entry(p, sha)
        return self.entries.get(key) == stamp

    def add(self, p: Path, sha: str) -> None:
        key, stamp = self._entry(p, sha)
        self.entries[key] = stamp
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.file, self.entries)
        except OSError:
            pass


LOCK = ".build.lock"


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold `out/.build.lock` (with this process' pid) while building into `out`: a second build into the same
    folder is refused by name; a lock left by a process that no longer runs (a killed build) is taken over."""
    lock = out / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_holder(lock)
            if pid is not None and pid != os.getpid() and _running(pid):
                raise AttrilensError(f"Another build (pid {pid}) is writing to {out}. Wait for it to finish, or "
                                     "pass another --out.") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone (or it is ours, from an interrupted call)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise AttrilensError(f"Could not take the build lock {lock}: another build keeps taking it. Pass another --out.")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_folder(folder: Path) -> None:
    """Delete a folder of shard files (the raw features once the stored ones are written)."""
    for p in folder.glob("*.npy*"):
        p.unlink()
    if folder.is_dir():
        folder.rmdir()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, mininterval=1.0, dynamic_ncols=True)
