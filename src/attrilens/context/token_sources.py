"""Which context source each prompt token belongs to, and per-token scores pooled into per-source scores.

The one-pass baselines (attention, gradient) score prompt positions; these helpers turn that into [S, T].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.spans import Sources


def prompt_token_owner(lm: LM, prompt: Callable[[str], str], sources: Sources) -> tuple[list[int], list[int]]:
    """The prompt's token ids and, for each, the source it belongs to (-1 for template/question tokens)."""
    marker = "\x00"
    head = prompt(marker).split(marker)[0]
    text = prompt(sources.context)
    formatted = lm.format_prompt(text)
    ctx_start = formatted.find(text) + len(head)
    enc = lm.tokenizer(formatted, add_special_tokens=not lm.use_chat_template, return_offsets_mapping=True)
    ids = lm.encode_prompt(text)
    if list(enc["input_ids"]) != ids:
        raise AttrilensError("The tokenizer's offsets do not match the prompt's tokens; use a fast tokenizer.")
    offsets = [(a - ctx_start, b - ctx_start) if b > a else (0, 0) for a, b in enc["offset_mapping"]]
    return ids, sources.token_owner(offsets)


def pool_by_source(per_position: torch.Tensor, owner: Sequence[int], n_sources: int) -> torch.Tensor:
    """Sum a [T, N_prompt] per-position score into [S, T] per-source scores."""
    out = torch.zeros(n_sources, per_position.shape[0], dtype=torch.float64)
    for i, s in enumerate(owner):
        if s >= 0:
            out[s] += per_position[:, i].double()
    return out
