"""What every index's `trace` checks about a query, and the model's own response when it attributes that."""

from __future__ import annotations

from attrilens.errors import AttrilensError
from attrilens.lm import LM


def check_prompt(prompt: str) -> None:
    """A query prompt must have some non-whitespace text."""
    if not prompt or not prompt.strip():
        raise AttrilensError("The query prompt is empty. Pass a non-empty prompt.")


def check_query(prompt: str, target: str | None, generate: bool, top_k: int) -> None:
    """A non-empty prompt, exactly one of a target and generate=True, a positive top_k."""
    check_prompt(prompt)
    if (target is None) == (not generate):
        raise AttrilensError("Pass exactly one of a target response or generate=True (--target T or --generate).")
    if top_k < 1:
        raise AttrilensError(f"top_k must be at least 1, got {top_k}.")


def generated_response(lm: LM, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy response to `prompt` (at most `max_new_tokens`); an empty one is an error."""
    if max_new_tokens < 1:
        raise AttrilensError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    target = lm.generate(prompt, max_new_tokens=max_new_tokens)
    if not target:
        raise AttrilensError("The model generated an empty response. Pass --target instead.")
    return target
