"""An index is verified before it is trusted: every kind of damage to a finished index is a one-line error naming
the file, never a silently wrong ranking; NaN or Inf scores are errors; builds into one folder take turns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from attrilens.errors import AttrilensError
from attrilens.testing import tiny_lm
from attrilens.training.index import TrainingIndex, build_index
from attrilens.training.store import LOCK, build_lock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUERY = ("the capital of velmora is", " quenth")


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", seed=3)


@pytest.fixture(scope="module")
def built(lm, tmp_path_factory):
    """A finished TrackStar index (estimated second moments, fitted R: it has a preconditioner) of 24 documents."""
    rng = np.random.default_rng(7)
    words = "the capital of velmora is quenth founded bank ada zorvia currency lumen tolm ostra kesh".split()
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words, size=int(rng.integers(4, 12))))} for i in range(24)]
    out = tmp_path_factory.mktemp("integrity") / "index"
    build_index(lm, docs, out, method="trackstar", proj_dim=256, shard_size=8, progress=False)
    return out


@pytest.fixture()
def index(built, tmp_path, monkeypatch):
    """A fresh copy of the built index (a new path: its checksums were never verified) and a private cache."""
    monkeypatch.setenv("ATTRILENS_HOME", str(tmp_path / "home"))
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    return copy


def shard(index, i: int = 1):
    manifest = json.loads((index / "manifest.json").read_text())
    return index / sorted(manifest["shards"], key=lambda s: s["start"])[i]["file"]


def data_offset(path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def overwrite_with_constants(path) -> None:
    off = data_offset(path)
    arr = np.load(path)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(np.full(arr.shape, 0.5, dtype=arr.dtype).tobytes())


def flip_bytes(path, n: int = 40, seed: int = 0) -> None:
    off, size = data_offset(path), path.stat().st_size
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        for pos in rng.integers(off, size, size=n):
            f.seek(int(pos))
            byte = f.read(1)[0]
            f.seek(int(pos))
            f.write(bytes([byte ^ 0xFF]))


def edit_manifest(index, change) -> None:
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_an_intact_index_opens_and_ranks(lm, index):
    hits = TrainingIndex.open(index, lm).trace(*QUERY, top_k=3).proponents
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)


DAMAGE = {
    "constants": (lambda ix: overwrite_with_constants(shard(ix)), "checksum"),
    "byte-flips": (lambda ix: flip_bytes(shard(ix)), "checksum"),
    "truncated-shard": (lambda ix: os.truncate(shard(ix), shard(ix).stat().st_size - 100), "truncated"),
    "object-shard": (lambda ix: np.save(shard(ix), np.empty((8, 1), dtype=object), allow_pickle=True), "holds objects"),
    "garbage-shard": (lambda ix: shard(ix).write_bytes(os.urandom(4096)), "not a readable .npy"),
    "no-shards": (lambda ix: edit_manifest(ix, lambda m: m.update(shards=[])), "0 of its 24 blocks"),
    "missing-shard-entry": (lambda ix: edit_manifest(ix, lambda m: m["shards"].pop(1)), "8 of its 24 blocks"),
    "invalid-manifest": (lambda ix: (ix / "manifest.json").write_text('{"schema": "attrilens/'), "not valid JSON"),
    "garbage-parquet": (lambda ix: (ix / "corpus.parquet").write_bytes(os.urandom(2048)), "corpus file"),
    "truncated-preconditioner": (lambda ix: os.truncate(ix / "preconditioner.safetensors", 64), "not the file"),
    "missing-preconditioner": (lambda ix: (ix / "preconditioner.safetensors").unlink(), "is missing"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_refused_on_open_with_one_line_naming_it(lm, index, kind):
    damage, fragment = DAMAGE[kind]
    damage(index)
    with pytest.raises(AttrilensError, match=fragment) as err:
        TrainingIndex.open(index, lm).trace(*QUERY, top_k=5)
    assert "\n" not in str(err.value) and "ebuild" in str(err.value)


def test_a_shard_changed_after_a_verified_open_is_caught_and_verify_rehashes_everything(lm, index):
    TrainingIndex.open(index, lm)  # verified once: checksums cached by size and mtime
    path = shard(index, 0)
    stat = path.stat()
    flip_bytes(path, seed=1)
    with pytest.raises(AttrilensError, match="checksum"):
        TrainingIndex.open(index, lm)  # the mtime moved: hashed again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damage that hides its mtime
    TrainingIndex.open(index, lm)  # the cheap checks pass (documented: size, header, cached checksum)
    with pytest.raises(AttrilensError, match="checksum"):
        TrainingIndex.open(index, lm, verify=True)


def test_non_finite_scores_are_an_error_never_a_ranking(lm, index):
    idx = TrainingIndex.open(index, lm)
    start, arr = idx.shards[1]
    arr[3, :] = np.nan  # copy-on-write map: the file stays intact, the scores do not
    with pytest.raises(AttrilensError, match=f"non-finite scores.*block {start + 3}"):
        idx.trace(*QUERY, top_k=5)


def test_the_cli_refuses_a_damaged_index_with_exit_2(lm, index, tmp_path):
    lm.save_pretrained(tmp_path / "model")
    edit_manifest(index, lambda m: m.update(model_dir=str(tmp_path / "model")))
    overwrite_with_constants(shard(index))
    proc = subprocess.run([sys.executable, "-m", "attrilens.cli", "trace", "--index", str(index), "--prompt",
                           QUERY[0], "--target", QUERY[1], "--verify"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "checksum" in errors[0] and str(shard(index).name) in errors[0]


def test_a_second_build_into_the_same_folder_is_refused_and_a_stale_lock_is_taken_over(lm, tmp_path):
    out = tmp_path / "index"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{sleeper.pid}\n")  # a live build holds the folder
        docs = [{"id": "a", "text": "the capital of velmora is quenth"}, {"id": "b", "text": "ada founded the bank"}]
        with pytest.raises(AttrilensError, match=f"Another build \\(pid {sleeper.pid}\\)"):
            build_index(lm, docs, out, method="grad-cos", proj_dim=64, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    build_index(lm, docs, out, method="grad-cos", proj_dim=64, progress=False)  # its holder is gone: taken over
    assert not (out / LOCK).exists() and json.loads((out / "manifest.json").read_text())["complete"]
    with build_lock(out):  # this process builds: another process is refused
        proc = subprocess.run([sys.executable, "-c", "from pathlib import Path\n"
                               "from attrilens.training.store import build_lock\n"
                               f"with build_lock(Path({str(out)!r})): pass"], capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode != 0 and f"Another build (pid {os.getpid()})" in proc.stderr
