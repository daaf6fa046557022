"""What a model directory holds beyond the final weights: saved checkpoints with their learning rates.

TracIn sums over the checkpoints of a full fine-tune; DataInf, on a LoRA adapter directory whose training.json
lists saved adapter checkpoints, scores at each of them (as LLM Attributor does). Both see the final model too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.training.search import AGGREGATES


def require_model_dir(model_dir: Path | None, what: str) -> Path:
    """The model directory, or an error saying that `what` needs it."""
    if model_dir is None or not Path(model_dir).is_dir():
        raise AttrilensError(f"{what} needs the model directory (optimizer state, checkpoints), but none is known "
                             "for this model. Pass model_dir= (or --model DIR).")
    return Path(model_dir)


def check_aggregate(how: str) -> None:
    """Checkpoint aggregation must be 'mean' or 'median' (the `aggregate` option of TracIn and DataInf)."""
    if how not in AGGREGATES:
        raise AttrilensError(f"aggregate must be 'mean' or 'median', not {how!r}.")


def saved_checkpoints(model_dir: Path) -> list[tuple[str, float]]:
    """(relative path or "" for the final model, learning rate) of every saved checkpoint, from training.json."""
    info_path = Path(model_dir) / "training.json"
    if not info_path.is_file():
        raise AttrilensError(f"No training.json in {model_dir}: TracIn needs the saved checkpoints and their learning "
                             "rates. Use a model written by `attrilens train`.")
    info = json.loads(info_path.read_text())
    out = [(c["path"], float(c["lr"])) for c in info.get("checkpoints", [])]
    final_lr = float(info.get("optimizer", {}).get("final_lr", info.get("config", {}).get("lr", 1.0)))
    out.append(("", final_lr))
    return out


def load_checkpoint_lm(path: Path, tokenizer, attn_implementation: str | None = None) -> LM:
    """A full-model checkpoint directory (weights only) as an LM with the final model's tokenizer."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return LM(model, tokenizer, name=str(path))


def lora_base_with_checkpoints(model_dir: Path | None) -> str | None:
    """The base model of a LoRA adapter directory whose training.json lists saved adapter checkpoints, else None."""
    if model_dir is None or not (model_dir / "adapter_config.json").is_file() or not (model_dir / "training.json").is_file():
        return None
    info = json.loads((model_dir / "training.json").read_text())
    return info["base"] if info.get("checkpoints") else None


def checkpoint_lms(lm: LM, model_dir: Path, checkpoints: list[tuple[str, float]],
                   load: Callable[[Path], LM]) -> list[tuple[LM, float]]:
    """(model, learning rate) of each of `saved_checkpoints(model_dir)`: "" is the final model, `lm` itself."""
    return [(lm if rel == "" else load(model_dir / rel), lr) for rel, lr in checkpoints]
