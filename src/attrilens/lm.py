"""`LM`: the one adapter over any Hugging Face causal LM and its tokenizer.

Every lens talks to a model through this class and nothing else: teacher-forced scoring, prefix KV-cache
reuse, reading and overwriting the residual stream, and generation with patches. It is the only place that
knows where an architecture keeps its decoder blocks, final norm and unembedding.

Layer indexing (used everywhere in attrilens): layer 0 is the embedding output (the input of block 0),
layer l is the output of block l-1, and layer L = n_layers is the output of the last block *before* the
final norm. Positions are token indices inside a row's own sequence (padding excluded); negative positions
count from the end of that row's sequence.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from attrilens.errors import AttrilensError

# model_type -> (embedding, decoder blocks, final norm) module paths. Unembedding is always
# get_output_embeddings(). Types not listed fall back to a search (see `_locate`).
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


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _locate(model: nn.Module) -> Architecture:
    """Find embedding, blocks, final norm and unembedding: table first, then a generic search."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    unembed = model.get_output_embeddings()
    if model_type in ARCHITECTURES:
        e, b, n = (_get(model, p) for p in ARCHITECTURES[model_type])
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


@dataclass(frozen=True)
class Patch:
    """Overwrite the residual stream of batch row `row` at (`layer`, `position`) with `value` (shape [d_model])."""

    row: int
    layer: int
    position: int
    value: torch.Tensor


@dataclass
class RunOutput:
    """Logits of one forward (or extension), the residual states read, and the cache if one was kept."""

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    cache: object | None = None
    attention_mask: torch.Tensor | None = None
    lengths: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer [B, heads, queries, keys], when asked for


@dataclass
class Batch:
    """A padded batch: ids, attention mask, position ids, and where each row's real tokens start."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]
    offsets: list[int]


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


def _attentions(output) -> tuple[torch.Tensor, ...]:
    """The per-layer attention weights of a forward run with output_attentions (an error if the model gave none)."""
    att = getattr(output, "attentions", None)
    if not att or any(a is None for a in att):
        raise AttrilensError("This model returned no attention weights. Use a method that does not read them.")
    return tuple(att)


def _output_cache(output) -> object:
    """The KV cache a forward returned, under either name transformers has used for it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def length_batches(lengths: Sequence[int], max_rows: int, max_padding: float = 0.125) -> list[list[int]]:
    """Row indices grouped for padded batches: sorted by length, at most `max_rows` rows, and a new batch whenever
    padding would exceed `max_padding` of the batch — on a CPU, padded positions cost as much as real ones."""
    if max_rows < 1:
        raise AttrilensError(f"batch_size must be at least 1, got {max_rows}.")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        rows = batches[-1] if batches else None
        if rows and len(rows) < max_rows:
            total = sum(lengths[j] for j in rows) + lengths[i]
            if 1 - total / (lengths[i] * (len(rows) + 1)) <= max_padding:
                rows.append(i)
                continue
        batches.append([i])
    return batches


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether a directory holds a peft LoRA adapter (rather than a whole model)."""
    return (Path(path) / "adapter_config.json").is_file()


def _load_model_and_tokenizer(path: Path, dtype: torch.dtype, attn_implementation: str | None):
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


class LM:
    """A causal LM and its tokenizer behind one interface (see module docstring for indexing)."""

    def __init__(self, model: nn.Module, tokenizer, *, chat_template: bool | None = None, name: str | None = None):
        if not hasattr(model, "config") or not hasattr(model, "get_output_embeddings"):
            raise AttrilensError(
                f"{type(model).__name__} is not a Hugging Face causal LM. Pass an AutoModelForCausalLM instance."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.arch = _locate(model)
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

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
        chat_template: bool | None = None,
        base: str | os.PathLike | None = None,
    ) -> LM:
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
        model, tokenizer = _load_model_and_tokenizer(path, dtype, attn_implementation)
        return cls(model.to(device), tokenizer, chat_template=chat_template, name=str(path))

    @classmethod
    def _from_adapter(cls, path: Path, base: str | os.PathLike | None, **kwargs) -> LM:
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
        model, tokenizer = _load_model_and_tokenizer(Path(base), kwargs["dtype"], kwargs["attn_implementation"])
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

    # ------------------------------------------------------------------ facts
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

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
            pos = _get(self.model, "transformer.wpe")
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

    # ------------------------------------------------------------------ tokens
    def chat(self, chat_template: bool | None = None) -> bool:
        """Whether a prompt is wrapped in the chat template: `chat_template` when given, else this LM's default."""
        if chat_template is None:
            return self.use_chat_template
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise AttrilensError("The chat template was asked for, but this model's tokenizer has none. "
                                 "Pass --no-chat-template (chat_template=False).")
        return bool(chat_template)

    def with_chat_template(self, chat_template: bool | None) -> LM:
        """This model with prompts wrapped in the chat template (True), left bare (False), or as now (None); the
        returned LM shares the model and tokenizer."""
        if chat_template is None or bool(chat_template) == self.use_chat_template:
            return self
        view = copy.copy(self)
        view.use_chat_template = self.chat(chat_template)
        return view

    def format_prompt(self, prompt: str, chat_template: bool | None = None) -> str:
        """The prompt as the model sees it: wrapped in the chat template when one is in use."""
        if not self.chat(chat_template):
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _tokenize(self, text: str, *, add_special_tokens: bool, what: str) -> list[int]:
        try:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        except Exception as exc:  # noqa: BLE001 - tokenizers raise bare TypeErrors for unencodable text
            raise AttrilensError(
                f"The {what} {text[:60]!r} cannot be tokenized ({type(exc).__name__}: {exc}). "
                "Pass valid UTF-8 text without lone surrogates."
            ) from exc

    def encode_prompt(self, prompt: str, chat_template: bool | None = None) -> list[int]:
        """Token ids of a prompt (chat template and special tokens applied as the model expects)."""
        if not prompt:
            raise AttrilensError("The prompt is empty. Pass a non-empty prompt.")
        chat = self.chat(chat_template)
        ids = self._tokenize(self.format_prompt(prompt, chat), add_special_tokens=not chat, what="prompt")
        if len(ids) > self.max_length:
            raise AttrilensError(
                f"The prompt is {len(ids)} tokens, longer than the model's context of {self.max_length}. "
                "Shorten the prompt or context."
            )
        return list(ids)

    def prompt_span(self, prompt: str, chat_template: bool | None = None) -> tuple[list[int], int, int]:
        """The prompt's token ids and the [start, end) tokens that hold the user's text itself (not the chat
        template around it, nor a BOS): what positions given by a user index."""
        chat = self.chat(chat_template)
        ids = self.encode_prompt(prompt, chat)
        text = self.format_prompt(prompt, chat)
        at = text.rfind(prompt)
        enc = self.tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids or at < 0:
            return ids, 0, len(ids)  # a slow tokenizer has no offsets: the whole sequence is the user's
        inside = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < at + len(prompt) and b > at]
        return (ids, inside[0], inside[-1] + 1) if inside else (ids, 0, len(ids))

    def encode_response(self, response: str) -> list[int]:
        """Token ids of a response; raises unless decoding them gives back the same text."""
        if not response:
            raise AttrilensError("The response is empty. Pass a non-empty response or generate one.")
        ids = self._tokenize(response, add_special_tokens=False, what="response")
        back = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        if back != response:
            raise AttrilensError(
                f"The response {response[:60]!r} does not round-trip through the tokenizer (decodes to {back[:60]!r}). "
                "Pass the response as the model's tokenizer writes it (e.g. normalised whitespace)."
            )
        return list(ids)

    def check_length(self, n_tokens: int, what: str = "prompt and response") -> None:
        if n_tokens > self.max_length:
            raise AttrilensError(
                f"The {what} take {n_tokens} tokens, more than the model's context of {self.max_length}. "
                "Shorten the context or the response."
            )

    def pad_batch(self, sequences: Sequence[Sequence[int]], *, padding_side: str = "right", offset: int = 0) -> Batch:
        """Pad token-id lists into a batch with attention mask and position ids (positions start at `offset`)."""
        if padding_side not in ("left", "right"):
            raise AttrilensError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        if not sequences or any(len(s) == 0 for s in sequences):
            raise AttrilensError("Cannot run an empty sequence. Pass at least one token per row.")
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        offsets = []
        for r, s in enumerate(sequences):
            start = width - len(s) if padding_side == "left" else 0
            ids[r, start : start + len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, start : start + len(s)] = 1
            offsets.append(start)
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + offset
        dev = self.device
        return Batch(ids.to(dev), mask.to(dev), pos.to(dev), [len(s) for s in sequences], offsets)

    # ------------------------------------------------------------------ forward with hooks
    def check_layer(self, layer: int) -> int:
        L = self.n_layers
        if not -(L + 1) <= layer <= L:
            raise AttrilensError(f"Layer {layer} is out of range: this model has layers 0..{L} (or -{L + 1}..-1).")
        return layer % (L + 1)

    @contextlib.contextmanager
    def _hooks(
        self,
        read_layers: Sequence[int],
        writes: dict[int, list[tuple[int, int, int, torch.Tensor]]],
        store: dict[int, torch.Tensor],
        applied: list[int],
    ) -> Iterator[None]:
        """Hooks that read (whole chunk) and overwrite the residual stream.

        `writes` maps layer -> [(patch index, row, column in this chunk, vector)]; `applied` counts how often
        each patch landed, so a patch that never applies is caught instead of silently doing nothing.
        """
        wanted = set(read_layers) | set(writes)
        handles = []

        def edit(layer: int, h: torch.Tensor) -> torch.Tensor:
            if writes.get(layer):
                h = h.clone()
                for k, row, col, value in writes[layer]:
                    h[row, col] = value.to(h.dtype)
                    applied[k] += 1
            if layer in read_layers:
                store[layer] = h
            return h

        def pre_hook(module, args, kwargs):
            if args:
                return (edit(0, args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = edit(0, kwargs["hidden_states"])
            return args, kwargs

        def make_post(layer: int):
            def post_hook(module, args, output):
                if isinstance(output, torch.Tensor):
                    return edit(layer, output)
                if isinstance(output, tuple):
                    return (edit(layer, output[0]), *output[1:])
                raise AttrilensError(
                    f"Block output of type {type(output).__name__} is not understood; cannot read or patch layer {layer}."
                )

            return post_hook

        try:
            if 0 in wanted:
                handles.append(self.arch.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            for layer in sorted(wanted - {0}):
                handles.append(self.arch.blocks[layer - 1].register_forward_hook(make_post(layer)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _normalise_patches(self, patches: Sequence[Patch], lengths: Sequence[int], n_rows: int) -> list[Patch]:
        out = []
        for p in patches:
            if not 0 <= p.row < n_rows:
                raise AttrilensError(f"Patch row {p.row} is outside the batch of {n_rows} rows.")
            layer = self.check_layer(p.layer)
            n = lengths[p.row]
            if not -n <= p.position < n:
                raise AttrilensError(
                    f"Patch position {p.position} is beyond row {p.row}'s {n} tokens. "
                    "Positions are token indices in that row's sequence; negative ones count from its end."
                )
            value = p.value.reshape(-1)
            if value.shape[0] != self.d_model:
                raise AttrilensError(
                    f"Patch vector has size {value.shape[0]} but this model's residual width is {self.d_model}. "
                    "Map the state with a fitted mapping first."
                )
            out.append(Patch(p.row, layer, p.position % n, value.to(self.device)))
        return out

    @torch.no_grad()
    def run(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        padding_side: str = "right",
        keep_cache: bool = False,
        attentions: bool = False,
    ) -> RunOutput:
        """One batched forward over token-id rows; read residual states and apply per-row patches (and return the
        attention weights, computed by eager attention, when asked)."""
        batch = self.pad_batch(sequences, padding_side=padding_side)
        for n in batch.lengths:
            self.check_length(n, "sequence")
        return self._forward(batch, read_layers=read_layers, patches=patches, keep_cache=keep_cache,
                             attentions=attentions)

    def _forward(
        self,
        batch: Batch,
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        cache=None,
        cache_mask: torch.Tensor | None = None,
        chunk_start: Sequence[int] | int = 0,
        keep_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        attentions: bool = False,
    ) -> RunOutput:
        """One forward of a padded batch (continuing `cache` when given); with `logits_at` ([B, K] columns of this
        chunk) the unembedding runs only there and the logits are [B, K, V] — a vocabulary-sized product per
        token is a fifth of a small model's cost."""
        from transformers import DynamicCache

        read = [self.check_layer(x) for x in read_layers]
        starts = [chunk_start] * len(batch.lengths) if isinstance(chunk_start, int) else list(chunk_start)
        full = [s + n for s, n in zip(starts, batch.lengths, strict=True)]
        plist = self._normalise_patches(patches, full, len(full))
        # A patch lands in this forward only if its position lies in this chunk (not in a cached prefix).
        writes: dict[int, list[tuple[int, int, int, torch.Tensor]]] = {}
        for k, p in enumerate(plist):
            if p.position >= starts[p.row]:
                col = batch.offsets[p.row] + p.position - starts[p.row]
                writes.setdefault(p.layer, []).append((k, p.row, col, p.value))
        store: dict[int, torch.Tensor] = {}
        applied = [0] * len(plist)
        mask = batch.attention_mask if cache_mask is None else torch.cat([cache_mask, batch.attention_mask], dim=1)
        if keep_cache and cache is None:
            cache = DynamicCache()
        extra = {self._cache_kwarg: cache}
        if logits_at is not None:
            extra["logits_to_keep"] = logits_at.to(batch.input_ids.device)
        if attentions:
            extra["output_attentions"] = True
        with torch.no_grad(), self._hooks(read, writes, store, applied), (
                self.eager_attention() if attentions else contextlib.nullcontext()):
            out = self.model(
                input_ids=batch.input_ids,
                attention_mask=mask,
                position_ids=batch.position_ids,
                use_cache=cache is not None,
                **extra,
            )
        for layer_writes in writes.values():
            for k, row, _, _ in layer_writes:
                if applied[k] != 1:
                    p = plist[k]
                    raise AttrilensError(
                        f"Patch at layer {p.layer}, position {p.position} of row {row} was applied {applied[k]} times "
                        "instead of once; the block hooks did not fire as expected for this architecture."
                    )
        return RunOutput(
            logits=out.logits,
            hidden=store,
            cache=_output_cache(out) if cache is not None else None,
            attention_mask=mask,
            lengths=batch.lengths,
            offsets=batch.offsets,
            attentions=_attentions(out) if attentions else None,
        )

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Eager attention (the implementation that returns weights) for the duration, then the original again."""
        before = self.model.config._attn_implementation
        if before != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if before != "eager":
                self.model.set_attn_implementation(before)

    # ------------------------------------------------------------------ hidden states
    @torch.no_grad()
    def hidden_states(
        self, sequences: Sequence[Sequence[int]], layers: Sequence[int] | None = None, *, padding_side: str = "right"
    ) -> tuple[dict[int, torch.Tensor], RunOutput]:
        """Residual states for every requested layer (default: all 0..L), as {layer: [B, T, d]} padded tensors."""
        layers = list(range(self.n_layers + 1)) if layers is None else list(layers)
        out = self.run(sequences, read_layers=layers, padding_side=padding_side)
        return {self.check_layer(k): v for k, v in out.hidden.items()}, out

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from a residual state of the last layer's kind: final norm, then unembedding (the logit lens)."""
        if self.arch.final_norm is not None:
            h = self.arch.final_norm(h)
        logits = self.arch.unembed(h)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ------------------------------------------------------------------ scoring
    def logprobs(
        self,
        prompts: str | Sequence[str],
        responses: str | Sequence[str],
        *,
        batch_size: int = 8,
        padding_side: str = "right",
    ) -> list[torch.Tensor]:
        """Teacher-forced log p of each response token given its prompt, one tensor per (prompt, response) pair."""
        single = isinstance(prompts, str)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        responses = [responses] if isinstance(responses, str) else list(responses)
        if len(prompts) != len(responses):
            raise AttrilensError(f"Got {len(prompts)} prompts but {len(responses)} responses. Pass one response per prompt.")
        pids = [self.encode_prompt(p) for p in prompts]
        rids = [self.encode_response(r) for r in responses]
        out = self.logprobs_ids(pids, rids, batch_size=batch_size, padding_side=padding_side)
        return out[:1] if single else out

    @torch.no_grad()
    def logprobs_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 8,
        padding_side: str = "right",
    ) -> list[torch.Tensor]:
        """Token-id version of `logprobs`: batched by similar length, padded with masks and position ids; the
        unembedding runs only at the positions that predict response tokens."""
        if padding_side not in ("left", "right"):
            raise AttrilensError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        results: list[torch.Tensor | None] = [None] * len(prompt_ids)
        seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        for s in seqs:
            self.check_length(len(s))
        for rows in length_batches([len(s) for s in seqs], batch_size):
            batch = self.pad_batch([seqs[i] for i in rows], padding_side=padding_side)
            width = max(len(response_ids[i]) for i in rows)
            cols = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                first = batch.offsets[r] + len(prompt_ids[i]) - 1  # the column predicting response token 0
                n = len(response_ids[i])
                cols[r] = torch.arange(first, first + width).clamp(max=first + n - 1)
            logp = torch.log_softmax(self._forward(batch, logits_at=cols).logits.float(), dim=-1)
            for r, i in enumerate(rows):
                tgt = torch.as_tensor(list(response_ids[i]), device=logp.device)
                results[i] = logp[r, torch.arange(len(tgt), device=logp.device), tgt].cpu()
        return results

    # ------------------------------------------------------------------ prefix cache
    @torch.no_grad()
    def prefix_cache(self, prefix_ids: Sequence[int], *, read_layers: Sequence[int] = (),
                     logits_at: Sequence[int] | None = None) -> RunOutput:
        """Run a prefix once (batch of one) and keep its KV cache for `extend` (logits only at `logits_at` if given)."""
        self.check_length(len(prefix_ids), "prefix")
        batch = self.pad_batch([prefix_ids])
        cols = None if logits_at is None else torch.as_tensor([list(logits_at)], dtype=torch.long)
        return self._forward(batch, read_layers=read_layers, keep_cache=True, logits_at=cols)

    @torch.no_grad()
    def extend(
        self,
        prefix: RunOutput,
        keep: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        logits_at: Sequence[Sequence[int]] | None = None,
        hide: Sequence[Sequence[int]] | None = None,
        attentions: bool = False,
    ) -> RunOutput:
        """Continue each suffix from the first `keep[r]` tokens of a cached prefix, all rows in one forward.

        Rows may keep different prefix lengths: the cache is cropped to max(keep), the positions a row does
        not keep are masked out, and the row's suffix takes positions keep[r], keep[r]+1, ... — the same
        computation as running prefix[:keep[r]] + suffix from scratch. Suffixes are right-padded. Logits
        are for the suffix positions only (or, with `logits_at`, for those suffix positions of each row, the
        same count per row); patches use positions in the full (kept prefix + suffix) row.
        `hide[r]` (attention knockout): kept-prefix positions row r's suffix may not attend to; the cached prefix
        itself stays as it was computed (with those positions visible). `attentions`: also return the suffix's
        attention weights (eager attention for this forward; keys = the kept prefix, then the suffix).
        """
        from transformers import DynamicCache

        n_prefix = prefix.lengths[0]
        if len(keep) != len(suffixes):
            raise AttrilensError(f"Got {len(keep)} keep lengths for {len(suffixes)} suffixes; pass one per suffix.")
        if hide is not None and (len(hide) != len(keep) or any(not 0 <= p < k for h, k in zip(hide, keep, strict=True)
                                                                for p in h)):
            raise AttrilensError("hide needs one list per suffix of positions inside that row's kept prefix.")
        if any(not 1 <= k <= n_prefix for k in keep):
            raise AttrilensError(f"keep lengths must lie in 1..{n_prefix} (the cached prefix), got {list(keep)}.")
        for k, s in zip(keep, suffixes, strict=True):
            self.check_length(k + len(s))
        if self.sliding_window is not None and len(set(keep)) > 1:
            if attentions:
                raise AttrilensError("Attention weights of rows with different keep lengths are not supported on "
                                     "sliding-window models; extend rows of one keep length together.")
            return self._extend_by_keep(prefix, keep, suffixes, read_layers=read_layers, patches=patches,
                                        logits_at=logits_at, hide=hide)
        width, rows = max(keep), len(suffixes)
        # one copy of the kept prefix per row, made when the cache is built (expand is a view)
        cache = DynamicCache(ddp_cache_data=[
            (layer.keys[..., :width, :].expand(rows, -1, -1, -1), layer.values[..., :width, :].expand(rows, -1, -1, -1))
            for layer in prefix.cache.layers])
        cache_mask = torch.zeros((len(suffixes), width), dtype=torch.long, device=self.device)
        for r, k in enumerate(keep):
            cache_mask[r, :k] = 1
            if hide is not None and hide[r]:
                cache_mask[r, list(hide[r])] = 0
        batch = self.pad_batch(suffixes, padding_side="right")
        batch.position_ids = batch.position_ids + torch.as_tensor(list(keep), device=self.device)[:, None]
        return self._forward(
            batch,
            read_layers=read_layers,
            patches=patches,
            cache=cache,
            cache_mask=cache_mask,
            chunk_start=list(keep),
            logits_at=None if logits_at is None else torch.as_tensor([list(c) for c in logits_at], dtype=torch.long),
            attentions=attentions,
        )

    def _extend_by_keep(self, prefix: RunOutput, keep: Sequence[int], suffixes: Sequence[Sequence[int]], *,
                        read_layers: Sequence[int], patches: Sequence[Patch],
                        logits_at: Sequence[Sequence[int]] | None,
                        hide: Sequence[Sequence[int]] | None = None) -> RunOutput:
        """`extend` one group of rows per keep length, stitched back in row order (right-padded).

        Sliding-window layers place their window by cache index; a row that keeps fewer prefix tokens than
        the batch's widest row would see its window shifted, so such models extend rows of equal keep together.
        """
        groups: dict[int, list[int]] = {}
        for r, k in enumerate(keep):
            groups.setdefault(k, []).append(r)
        width = max(len(s) for s in suffixes)
        logits = None
        hidden: dict[int, torch.Tensor] = {}
        for k, rows in groups.items():
            local = {r: i for i, r in enumerate(rows)}
            sub = [Patch(local[p.row], p.layer, p.position, p.value) for p in patches if p.row in local]
            out = self.extend(prefix, [k] * len(rows), [suffixes[r] for r in rows], read_layers=read_layers,
                              patches=sub, logits_at=None if logits_at is None else [logits_at[r] for r in rows],
                              hide=None if hide is None else [hide[r] for r in rows])
            if logits is None:
                cols = width if logits_at is None else len(logits_at[0])
                logits = out.logits.new_zeros((len(keep), cols, out.logits.shape[-1]))
            logits[rows, : out.logits.shape[1]] = out.logits
            for layer, h in out.hidden.items():
                hidden.setdefault(layer, h.new_zeros((len(keep), width, h.shape[-1])))[rows, : h.shape[1]] = h
        return RunOutput(logits=logits, hidden=hidden, lengths=[len(s) for s in suffixes], offsets=[0] * len(keep))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 32,
        patches: Sequence[Patch] = (),
        stop_at_eos: bool = True,
        stop_strings: Sequence[str] = (),
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[list[int]]:
        """Greedy (or seeded sampled) generation for a batch, with patches applied at prefill.

        Left-padded prompts are prefilled once with the patches; each decode step feeds one token per row
        through the KV cache. Decode steps never re-apply prompt patches (their positions lie in the prompt).
        """
        from transformers import DynamicCache

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise AttrilensError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}. Pass 1 or more.")
        batch = self.pad_batch(prompt_ids, padding_side="left")
        for n in batch.lengths:
            self.check_length(n + max_new_tokens, "prompt and generated tokens")
        out = self._forward(batch, patches=patches, keep_cache=True, cache=DynamicCache())
        gen = torch.Generator().manual_seed(seed)
        eos = self.tokenizer.eos_token_id
        mask = batch.attention_mask
        next_pos = batch.position_ids[:, -1:] + 1
        produced: list[list[int]] = [[] for _ in prompt_ids]
        done = [False] * len(prompt_ids)
        logits = out.logits[:, -1]
        cache = out.cache
        for _ in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
                tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            else:
                tok = logits.argmax(-1).cpu()
            for r, t in enumerate(tok.tolist()):
                if not done[r]:
                    produced[r].append(t)
                    if (stop_at_eos and t == eos) or (
                        stop_strings and any(s in self.tokenizer.decode(produced[r]) for s in stop_strings)
                    ):
                        done[r] = True
            if all(done):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step = self.model(
                input_ids=tok[:, None].to(self.device),
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
            cache = _output_cache(step)
            logits = step.logits[:, -1]
            next_pos = next_pos + 1
        if stop_at_eos:
            produced = [p[:-1] if p and p[-1] == eos else p for p in produced]
        return produced

    def generate(self, prompt: str, *, max_new_tokens: int = 32, stop_strings: Sequence[str] = ("\n",),
                 chat_template: bool | None = None, **kw) -> str:
        """Greedy response text for one prompt (stops at eos or any stop string, which is cut off)."""
        ids = self.generate_ids([self.encode_prompt(prompt, chat_template)], max_new_tokens=max_new_tokens,
                                stop_strings=stop_strings, **kw)[0]
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        for s in stop_strings:
            if s in text:
                text = text[: text.index(s)]
        return text

    def __repr__(self) -> str:
        return f"LM({self.name!r}, type={self.arch.model_type}, layers={self.n_layers}, d_model={self.d_model})"
