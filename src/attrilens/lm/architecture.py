"""Where an architecture keeps its embedding, decoder blocks, final norm and unembedding: the one place in
attrilens that knows module paths (the `ARCHITECTURES` table first, then a generic search)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attrilens.errors import AttrilensError

# model_type -> (embedding, decoder blocks, final norm) module paths. Unembedding is always
# get_output_embeddings(). Types not listed fall back to a search (see `locate`).
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "gpt2": ("transformer.wte", "transformer.h", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.embed_in", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "llama": ("model.embed_tokens", "model.layers", "model.norm"),
    "qwen2": ("model.embed_tokens", "model.layers", "model.norm"),
    "qwen3": ("model.embed_tokens", "model.layers", "model.norm"),
    "mistral": ("model.embed_tokens", "model.layers", "model.norm"),
    "gemma": ("model.embed_tokens", "model.layers", "model.norm"),
    "gemma2": ("model.embed_tokens", "model.layers", "model.norm"),
    "gemma3_text": ("model.embed_tokens", "model.layers", "model.norm"),
    "phi3": ("model.embed_tokens", "model.layers", "model.norm"),
    "olmo": ("model.embed_tokens", "model.layers", "model.norm"),
}
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class Architecture:
    """Where a model keeps the parts the lenses need."""

    model_type: str
    embed: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    unembed: nn.Module
    blocks_path: str = ""  # module path of `blocks` inside the model (e.g. "model.layers")


def find_submodule(model: nn.Module, path: str) -> nn.Module | None:
    """The submodule at `path` (e.g. "model.layers"), or None when the model has none there."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def locate(model: nn.Module) -> Architecture:
    """Find embedding, blocks, final norm and unembedding: table first, then a generic search."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    unembed = model.get_output_embeddings()
    if model_type in ARCHITECTURES:
        e, b, n = (find_submodule(model, p) for p in ARCHITECTURES[model_type])
        if e is not None and isinstance(b, nn.ModuleList) and n is not None and unembed is not None:
            return Architecture(model_type, e, b, n, unembed, ARCHITECTURES[model_type][1])
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and n_layers:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            norm = next((getattr(parent, a) for a in _NORM_NAMES if isinstance(getattr(parent, a, None), nn.Module)), None)
            embed = model.get_input_embeddings()
            if unembed is not None and embed is not None:
                return Architecture(model_type, embed, module, norm, unembed, name)
    raise AttrilensError(
        f"Cannot find the decoder blocks, final norm and unembedding of model type {model_type!r}. "
        "Add its module paths to attrilens.lm.ARCHITECTURES."
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
