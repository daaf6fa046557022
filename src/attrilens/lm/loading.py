"""Loading an `LM`: a registered model name, a local Hugging Face directory or a LoRA adapter on its base, from
safetensors only (pickled weights are refused), and saving one back as a Hugging Face directory."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TypeVar

import torch

from attrilens.errors import AttrilensError

_LM = TypeVar("_LM", bound="LoadingMixin")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether a directory holds a peft LoRA adapter (rather than a whole model)."""
    return (Path(path) / "adapter_config.json").is_file()


def load_model_and_tokenizer(path: Path, dtype: torch.dtype, attn_implementation: str | None):
    """A causal LM and its tokenizer from a local save_pretrained directory, with one-line errors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (path / "config.json").is_file():
        raise AttrilensError(f"{str(path)!r} has no config.json. Pass a directory written by save_pretrained.")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - the message is what the user needs
        raise AttrilensError(f"Cannot read the model config in {str(path)!r}: {exc}. Check config.json.") from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise AttrilensError(
            f"{str(path)!r} holds a {config.model_type!r} model, which is not a causal LM. "
            "Pass a directory of an AutoModelForCausalLM model."
        )
    refuse_pickled_weights(path, "model.safetensors")
    kwargs = {"local_files_only": True, "dtype": dtype, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise AttrilensError(f"Cannot load the model or tokenizer in {str(path)!r}: {first}") from None
    return model, tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickled_weights(path: Path, expected: str) -> None:
    """Weights only from safetensors: a directory whose weights are pickle files (which run code when loaded) is
    refused in one line naming them, never unpickled."""
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise AttrilensError(f"{str(path)!r} holds its weights as pickle files ({', '.join(pickled[:3])}), which can "
                             f"run code when loaded; attrilens reads safetensors only. Convert them to {expected} "
                             "(save_pretrained in a trusted environment) and pass that directory.")


class LoadingMixin:
    """`LM`'s constructors from disk and `save_pretrained` (mixed into `LM`)."""

    @classmethod
    def from_pretrained(
        cls: type[_LM],
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
        chat_template: bool | None = None,
        base: str | os.PathLike | None = None,
    ) -> _LM:
        """Load a registered model name (`attrilens models list`), a model directory, or a LoRA adapter directory on
        its base model (local only: no hub downloads).

        An adapter directory (with `adapter_config.json`) is loaded onto `base`, else onto the base its
        `training.json` (written by `attrilens train --lora`) or its adapter config names.
        """
        from attrilens import models

        if str(path) in models.MODELS:  # a registered real model, converted once into the cache (./name: a folder)
            path = models.get(str(path))
        path = Path(path)
        if not path.is_dir():
            raise AttrilensError(f"Model directory {str(path)!r} does not exist. Pass a local Hugging Face model "
                                 f"directory or a registered model name ({', '.join(models.MODELS)}).")
        if is_adapter_dir(path):
            return cls._from_adapter(path, base, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                     chat_template=chat_template)
        model, tokenizer = load_model_and_tokenizer(path, dtype, attn_implementation)
        return cls(model.to(device), tokenizer, chat_template=chat_template, name=str(path))

    @classmethod
    def _from_adapter(cls: type[_LM], path: Path, base: str | os.PathLike | None, **kwargs) -> _LM:
        from peft import PeftModel

        if base is None:
            info = path / "training.json"
            config = info if info.is_file() else path / "adapter_config.json"
            try:
                meta = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise AttrilensError(f"Cannot read {config}: {exc}. Pass the adapter's base model directory.") from None
            base = meta.get("base") or meta.get("base_model_name_or_path")
        from attrilens import models

        if base is not None and str(base) in models.MODELS:  # a shipped adapter names its base by registered name
            base = models.get(str(base))
        if not base or not Path(base).is_dir():
            raise AttrilensError(f"The base model of the LoRA adapter in {str(path)!r} ({base}) is not a local directory. "
                                 "Pass its base model directory.")
        refuse_pickled_weights(path, "adapter_model.safetensors")
        model, tokenizer = load_model_and_tokenizer(Path(base), kwargs["dtype"], kwargs["attn_implementation"])
        try:
            with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing to do for users
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                inner = PeftModel.from_pretrained(model, str(path), use_safetensors=True).base_model.model
        except Exception as exc:  # noqa: BLE001 - the message is what the user needs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise AttrilensError(f"Cannot load the LoRA adapter in {str(path)!r} onto {base}: {first}") from None
        return cls(inner.eval().to(kwargs["device"]), tokenizer, chat_template=kwargs["chat_template"], name=str(path))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model and its tokenizer as a Hugging Face directory that `LM.from_pretrained` loads."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory
