"""GGUF → Hugging Face conversion: dequantise with transformers' GGUF loader, save fp32 safetensors, and check the
saved copy (tokenizer round-trips, chat template, logits, parameter count) against the GGUF-loaded model."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.models.registry import RealModel, log

# Texts the converted tokenizer must encode and decode exactly as the GGUF one does.
_SAMPLE_TEXTS = (
    "The capital of France is Paris.",
    "Hello world! Ünïcödé, 日本語, emoji 🙂 and numbers 1234567.89 — done.\n\tIndented  double  spaces",
    "def f(x):\n    return x ** 2  # code\n",
)
_SAMPLE_PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"
_MAX_LOGIT_DIFF = 1e-4


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


def convert_gguf(model: RealModel, gguf: Path, out: Path, progress: bool) -> dict:
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
            log(f"dequantising {gguf.name} with transformers (about a minute) ...")
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
            log(f"saved to safetensors in {t1 - t0:.0f} s; checking the saved copy against the GGUF ...")

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
        log(f"checked: max |Δlogit| = {diff:.3g}, tokenizer round-trips ({time.monotonic() - t1:.0f} s)")
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
