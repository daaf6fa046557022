"""Where a curate run starts from and what its retrain repeats: the adapter (given, or an index's model) and its
index, the adapter's training.json, the base model it was trained on (checked), the recorded training settings and
the index's eval queries."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.lm import is_adapter_dir

RETRAIN_KEYS = ("r", "alpha", "target_modules", "epochs", "lr", "batch_size", "seq_len", "seed", "weight_decay")


def read_training_info(adapter: Path) -> dict:
    """The adapter's training.json (what finetune_lora recorded): base, config and corpus."""
    path = adapter / "training.json"
    if not path.is_file():
        raise AttrilensError(f"{adapter} has no training.json, so its training settings are unknown. Curate adapters "
                             "trained by attrilens (`attrilens train --lora`, demo.lora.finetune_lora).")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttrilensError(f"Cannot read {path}: {exc}. Retrain the adapter.") from None
    missing = [k for k in RETRAIN_KEYS if k not in (info.get("config") or {})]
    if not info.get("base") or missing or not isinstance(info.get("optimizer"), dict):
        raise AttrilensError(f"{path} lacks the base, optimizer or config fields ({', '.join(missing) or 'base'}) a "
                             "retrain repeats. Retrain the adapter with this attrilens.")
    if not isinstance(info.get("corpus"), dict) or not info["corpus"].get("sha256"):
        raise AttrilensError(f"{path} records no corpus hash (an adapter from an older attrilens), so the corpus "
                             "cannot be checked. Retrain the adapter with this attrilens, then curate it.")
    return info


def _files_digest(directory: Path) -> str:
    """sha256 over a model directory's config.json and weight files: two copies of one model agree."""
    h = hashlib.sha256()
    for p in sorted([directory / "config.json", *directory.glob("*.safetensors")]):
        if p.is_file():
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


def check_base(base: str | Path | None, info: dict, adapter: Path, manifest: dict | None) -> tuple[Path, str]:
    """(directory, spelling to retrain with) of the base model: the recorded one (a registered name or a directory),
    or `base` if it is that model (the same path, or the same config and weights; with an index and the recorded
    base gone, the adapter on it must have the index's model fingerprint, checked when it is loaded)."""
    from attrilens import models

    spec = str(info["base"])
    name = spec if spec in models.MODELS else None
    recorded = models.path(name) if name else Path(spec)
    if base is None:
        if name:
            return models.resolve_model(name), name
        if not recorded.is_dir():
            raise AttrilensError(f"The base model the adapter in {adapter} was trained on ({recorded}) is not on "
                                 "disk. Pass --base with that model's directory or registered name.")
        return recorded, spec
    registered = isinstance(base, str) and base in models.MODELS
    given = models.path(base) if registered else Path(base).expanduser()
    if given.resolve() == recorded.resolve():
        return (models.resolve_model(base) if registered else given), spec
    if not given.is_dir():
        if registered:
            raise AttrilensError(f"The adapter in {adapter} was trained on {spec}, not on {base}. Pass --base {spec} "
                                 "or drop --base.")
        models.resolve_model(str(base))  # raises: neither a registered name nor a directory
    if recorded.is_dir():
        if _files_digest(given) != _files_digest(recorded):
            raise AttrilensError(f"The adapter in {adapter} was trained on the base model {spec}, not on {base} "
                                 f"(different config or weights). Pass --base {spec} or drop --base.")
        return given, str(given)
    if manifest is None:
        raise AttrilensError(f"The recorded base model of {adapter} ({spec}) is not on disk, so --base {base} cannot "
                             "be checked against it. Pass --index (its model fingerprint checks the base) or restore it.")
    return given, str(given)  # checked in `_load_old`: the adapter on this base must have the index's fingerprint


def find_source(index_or_model_dir: Path | str) -> tuple[Path, Path | None, dict | None]:
    """(adapter dir, index dir or None, index manifest or None) from an index directory or an adapter directory."""
    from attrilens.training.store import read_manifest

    path = Path(index_or_model_dir)
    if not path.is_dir():
        raise AttrilensError(f"{str(path)!r} is not a directory. Pass an index directory (--index) or a LoRA adapter "
                             "directory (--model).")
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if manifest.get("method") == "verbatim":
            raise AttrilensError(f"{path} is a verbatim index, which curate does not re-trace. Pass a gradient index "
                                 "or the adapter directory (--model).")
        model_dir = manifest.get("model_dir")
        if not model_dir or not is_adapter_dir(model_dir):
            raise AttrilensError(f"The index in {path} was built on {model_dir or 'a model it does not name'}, not on a "
                                 "LoRA adapter directory on disk; curate retrains LoRA adapters. Pass --model ADAPTER.")
        return Path(model_dir), path, manifest
    if is_adapter_dir(path):
        return path, None, None
    raise AttrilensError(f"{path} is neither an attrilens index (manifest.json) nor a LoRA adapter directory "
                         "(adapter_config.json). Pass one of those.")


def _keep_checkpoints(total: int, steps: list[int]) -> int:
    """The keep_checkpoints that gives the recorded checkpoint steps for `total` steps (finetune_lora's rule)."""
    for k in (2, *range(0, 65)):
        every = max(1, math.ceil(total / (k + 1))) if k else 0
        if [s for s in range(1, total + 1) if every and s % every == 0 and s < total] == steps:
            return k
    raise AttrilensError(f"The recorded checkpoints (steps {steps} of {total}) do not follow finetune_lora's rule. "
                         "Retrain the adapter with this attrilens.")


def retrain_settings(info: dict) -> dict:
    """finetune_lora's keyword arguments that repeat the recorded training: config, seed, checkpoints, step cap
    (training.json's "settings" as given; for an adapter that has none, from its config and checkpoint steps)."""
    given = info.get("settings")
    if isinstance(given, dict) and all(k in given for k in (*RETRAIN_KEYS, "keep_checkpoints", "max_steps")):
        return {k: given[k] for k in (*RETRAIN_KEYS, "keep_checkpoints", "max_steps")}
    cfg = info["config"]
    settings = {k: cfg[k] for k in RETRAIN_KEYS}
    total = int(info["optimizer"]["step"])
    full = cfg["epochs"] * math.ceil(int(info.get("n_documents", 0)) / cfg["batch_size"])
    settings["max_steps"] = total if total < full else None
    settings["keep_checkpoints"] = _keep_checkpoints(total, [int(c["step"]) for c in info.get("checkpoints", [])])
    return settings


def eval_queries_for(manifest: dict | None, path: Path | str | None) -> list[dict] | None:
    """The eval queries an index was built with (TrackStar's R_eval), checked against its manifest's fingerprint."""
    from attrilens.training.methods import TDA_METHODS

    n = int(((manifest or {}).get("eval_queries") or {}).get("n", 0))
    if manifest is None or n == 0 or not TDA_METHODS.get(manifest["method"]).uses_eval_queries:
        if path is not None:
            raise AttrilensError("--eval-queries is only for an index built with eval queries. Drop it.")
        return None
    if path is None:
        raise AttrilensError(f"The index was built with {n} eval queries; the new index needs the same ones. Pass "
                             "--eval-queries FILE (the file given to `attrilens index build`).")
    rows = load_jsonl(path, require=("prompt", "target"))
    fp = hashlib.sha256(json.dumps([[q.get("prompt"), q.get("target")] for q in rows]).encode()).hexdigest()
    if fp != manifest["eval_queries"]["fingerprint"]:
        raise AttrilensError(f"{path} are not the eval queries the index was built with. Pass the same file.")
    return rows

