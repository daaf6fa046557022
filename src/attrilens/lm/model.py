"""`LM` itself: a causal LM and its tokenizer, composed of the loading, prompt, forward, scoring, prefix-cache
and generation mixins, with the facts every lens reads (layers, width, context, fingerprint) and `early_exit`."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json

import torch
from torch import nn

from attrilens.errors import AttrilensError
from attrilens.lm.architecture import find_submodule, locate, model_device
from attrilens.lm.cache import CacheMixin
from attrilens.lm.forward import ForwardMixin
from attrilens.lm.generation import GenerationMixin
from attrilens.lm.loading import LoadingMixin
from attrilens.lm.prompts import PromptMixin
from attrilens.lm.scoring import ScoringMixin

_VOLATILE_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "architectures", "use_cache", "return_dict"}


def _config_identity(config) -> dict:
    """The config keys that define the model (not where it was loaded from, nor runtime flags)."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS and not k.startswith("output_")
    }


def _shallow_module_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing `module`'s parameters, buffers and children, with its own child table."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


class LM(LoadingMixin, PromptMixin, ForwardMixin, ScoringMixin, CacheMixin, GenerationMixin):
    """A causal LM and its tokenizer behind one interface (see `attrilens.lm` for layer and position indexing)."""

    def __init__(self, model: nn.Module, tokenizer, *, chat_template: bool | None = None, name: str | None = None):
        if not hasattr(model, "config") or not hasattr(model, "get_output_embeddings"):
            raise AttrilensError(
                f"{type(model).__name__} is not a Hugging Face causal LM. Pass an AutoModelForCausalLM instance."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.arch = locate(model)
        self.name = name or getattr(model.config, "_name_or_path", "") or self.arch.model_type
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_template:
            raise AttrilensError("chat_template=True but the tokenizer has no chat template. Pass chat_template=False.")
        self.use_chat_template = has_template if chat_template is None else chat_template
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.convert_ids_to_tokens(0)
        self._fingerprint: str | None = None
        self.exit_layer: int | None = None  # set on an `early_exit` view: the blocks it keeps
        # transformers ≥ 5.24 names the KV cache argument `cache` (the old `past_key_values` warns on every call)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ------------------------------------------------------------------ facts
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.arch.blocks)

    @property
    def d_model(self) -> int:
        return self.arch.embed.weight.shape[-1]

    @property
    def sliding_window(self) -> int | None:
        """The attention window of the model's sliding-window layers, or None when every layer attends globally."""
        window = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None)
        if not window or (types is not None and "sliding_attention" not in types):
            return None
        if types is None and not getattr(self.config, "use_sliding_window", True):
            return None
        return int(window)

    @property
    def max_length(self) -> int:
        c = self.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(c, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 1 << 30

    def early_exit(self, k: int) -> LM:
        """This model cut after its first `k` blocks, then its own final norm and unembedding: a proxy with the
        same tokenizer and no extra weights (cost ≈ k/L of a forward). Shares every parameter with this LM."""
        if not isinstance(k, int) or not 1 <= k < self.n_layers:
            raise AttrilensError(f"An early-exit proxy keeps 1..{self.n_layers - 1} of this model's {self.n_layers} "
                                 f"blocks, not {k!r}. Pass early-exit:K with K in that range.")
        config = copy.deepcopy(self.config)
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(config, key, None), int):
                setattr(config, key, k)
        for key in ("layer_types", "block_types"):  # per-layer lists (sliding/global attention) are cut too
            if isinstance(getattr(config, key, None), list):
                setattr(config, key, getattr(config, key)[:k])
        root = _shallow_module_copy(self.model)
        parent = root
        *path, leaf = self.arch.blocks_path.split(".")
        for part in path:
            child = _shallow_module_copy(parent._modules[part])
            parent._modules[part] = child
            parent = child
        parent._modules[leaf] = nn.ModuleList(list(self.arch.blocks)[:k])
        for module in [root, *(root.get_submodule(".".join(path[: i + 1])) for i in range(len(path)))]:
            if "config" in module.__dict__:
                module.config = config
        lm = LM(root, self.tokenizer, chat_template=self.use_chat_template, name=f"{self.name} [early exit after block {k}]")
        lm.exit_layer = k
        return lm

    def n_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count, optionally without the embedding and unembedding matrices (the FLOP-proxy count)."""
        total = sum(p.numel() for p in self.model.parameters())
        if non_embedding:
            seen = {id(self.arch.embed.weight)}
            total -= self.arch.embed.weight.numel()
            w = getattr(self.arch.unembed, "weight", None)
            if w is not None and id(w) not in seen:
                total -= w.numel()
            pos = find_submodule(self.model, "transformer.wpe")
            if pos is not None:
                total -= pos.weight.numel()
        return total

    def fingerprint(self) -> str:
        """sha256 of the config and every weight: an index or result built with another model will not match."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(_config_identity(self.config), sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"LM({self.name!r}, type={self.arch.model_type}, layers={self.n_layers}, d_model={self.d_model})"
