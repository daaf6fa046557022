"""Attention-weight and gradient-norm attributions (baselines): one pass over the full prompt + response.

Both give per-(source, response token) scores that add over response tokens, so a response sub-span is
re-scored without new passes. These are the only context-lens functions that call the model object directly
(attention weights and input-embedding gradients are not part of `LM`'s scoring interface).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.results import Cost, Timer
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


def _pool(per_position: torch.Tensor, owner: Sequence[int], n_sources: int) -> torch.Tensor:
    """Sum a [T, N_prompt] per-position score into [S, T] per-source scores."""
    out = torch.zeros(n_sources, per_position.shape[0], dtype=torch.float64)
    for i, s in enumerate(owner):
        if s >= 0:
            out[s] += per_position[:, i].double()
    return out


@contextlib.contextmanager
def _eager_attention(lm: LM) -> Iterator[None]:
    """Switch to eager attention (which returns weights) for the duration, then restore the original."""
    before = lm.model.config._attn_implementation
    if before != "eager":
        lm.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            lm.model.set_attn_implementation(before)


@torch.no_grad()
def attention_scores(lm: LM, prompt: Callable[[str], str], sources: Sources, response_ids: Sequence[int],
                     cost: Cost) -> torch.Tensor:
    """[S, T]: attention from the position predicting response token t to source s's tokens (mean of layers, heads)."""
    with Timer(cost):
        ids, owner = prompt_token_owner(lm, prompt, sources)
        full = ids + list(response_ids)
        lm.check_length(len(full))
        with _eager_attention(lm):
            out = lm.model(input_ids=torch.tensor([full], device=lm.device), output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise AttrilensError("This model returned no attention weights. Use another method (e.g. cached).")
        att = torch.stack([a[0].float() for a in out.attentions]).mean(dim=(0, 1))  # [N, N]
        n, T = len(ids), len(response_ids)
        cost.add(1, len(full))
        return _pool(att[n - 1 : n - 1 + T, :n].cpu(), owner, len(sources))


def gradient_scores(lm: LM, prompt: Callable[[str], str], sources: Sources, response_ids: Sequence[int],
                    cost: Cost) -> torch.Tensor:
    """[S, T]: Σ over source s's tokens of ‖∂ log p(r_t) / ∂ e_i‖₂ (input-embedding saliency per response token).

    One forward and T backward passes; a backward counts as two forward passes in the cost.
    """
    with Timer(cost):
        ids, owner = prompt_token_owner(lm, prompt, sources)
        full = ids + list(response_ids)
        lm.check_length(len(full))
        n, T = len(ids), len(response_ids)
        with torch.enable_grad():
            emb = lm.arch.embed(torch.tensor([full], device=lm.device)).detach().requires_grad_(True)
            logits = lm.model(inputs_embeds=emb).logits[0, n - 1 : n - 1 + T].float()
            lp = torch.log_softmax(logits, -1)[torch.arange(T), torch.as_tensor(list(response_ids), device=lm.device)]
            norms = []
            for t in range(T):
                (g,) = torch.autograd.grad(lp[t], emb, retain_graph=t < T - 1)
                norms.append(g[0, :n].norm(dim=-1).cpu())
        cost.add(1 + 2 * T, len(full) * (1 + 2 * T))
        return _pool(torch.stack(norms), owner, len(sources))
