"""The cache of converted models: `get` (fetch, convert and record a model once, under a lock, atomically),
`is_cached` and `resolve_model` (a registered name or a local directory)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.models.convert import convert_gguf
from attrilens.models.fetch import fetch_gguf
from attrilens.models.integrity import check_entry, write_metadata
from attrilens.models.registry import MODELS, RealModel, log, lookup, path


def is_cached(name: str) -> bool:
    """Whether `name` is converted and its files still match their recorded sizes and mtimes (no hashing)."""
    model = lookup(name)
    return check_entry(model, path(name), "fast")[0] == "ok"


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model directory from a registered name (fetched on first use) or an existing local directory.

    A str that is a registered name wins over a same-named folder (write ./name for the folder); a Path is
    always taken as a directory.
    """
    if isinstance(name_or_dir, str) and name_or_dir in MODELS:
        return get(name_or_dir)
    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return p
    raise AttrilensError(
        f"{str(name_or_dir)!r} is neither a registered model ({', '.join(MODELS)}) nor an existing directory. "
        "Pass one of those names or a local model directory."
    )


def get(name: str, *, progress: bool = True, verify: bool = False) -> Path:
    """The converted model directory of `name`, fetching, verifying and converting it on first use.

    A cached model is returned after checking its metadata and every file's size and mtime (well under a
    second); `verify=True` re-hashes every file. A corrupt or partial entry is removed and rebuilt.
    """
    model = lookup(name)
    final = path(name)
    if not verify and check_entry(model, final, "fast")[0] == "ok":
        return final
    with _locked(final.parent, model.name):
        status, reason = check_entry(model, final, "full" if verify else "changed")
        if status == "ok":
            return final
        if status == "corrupt":
            log(f"the cached {model.name} in {final} is corrupt ({reason}): removing it and converting again")
        _cleanup(final.parent, model.name)
        _build(model, final, progress)
        return final


@contextlib.contextmanager
def _locked(models_dir: Path, name: str) -> Iterator[None]:
    """Hold `<models_dir>/<name>.lock` (flock, holding our pid); waits for another process holding it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(models_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            log(f"waiting for process {holder}, which is preparing {name} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _cleanup(models_dir: Path, name: str) -> None:
    """Remove the final dir and leftovers of interrupted builds (only called while holding the lock)."""
    for p in [models_dir / name, *models_dir.glob(f"{name}.tmp-*"), *models_dir.glob(f"{name}.dl-*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _build(model: RealModel, final: Path, progress: bool) -> None:
    """Fetch the GGUF, convert it into `<name>.tmp-<pid>/`, write the metadata, rename to `final`."""
    staging = final.with_name(f"{model.name}.tmp-{os.getpid()}")
    downloads = final.with_name(f"{model.name}.dl-{os.getpid()}")
    t0 = time.monotonic()
    try:
        gguf = fetch_gguf(model, downloads, progress)
        t1 = time.monotonic()
        staging.mkdir(parents=True)
        info = convert_gguf(model, gguf, staging, progress)
        t2 = time.monotonic()
        info["seconds"] = {"fetch": round(t1 - t0, 1), "convert": round(t2 - t1, 1)}
        write_metadata(model, staging, info)
        os.replace(staging, final)
    except AttrilensError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise AttrilensError(
            f"Converting {model.name} failed ({type(exc).__name__}: {detail}). Retry with `{model.retry}`."
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
    if progress:
        log(f"{model.name} is ready in {final} ({time.monotonic() - t0:.0f} s)")
