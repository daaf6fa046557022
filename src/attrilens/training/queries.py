"""What every index's `trace` checks about a query, and the model's own response when it attributes that."""

from __future__ import annotations

import re
from dataclasses import dataclass

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


PLAIN, CHAT = "plain text", "chat template"  # the two prompt forms a result names (generated_with, scored_as)


def prompt_form(chat: bool) -> str:
    """The name of a prompt form in results and messages: "chat template" or "plain text"."""
    return CHAT if chat else PLAIN


def asks_for_an_answer(prompt: str) -> bool:
    """Whether a prompt is a finished sentence (a question or an instruction: it ends in ?, !, ., : or a closing
    quote or bracket) rather than a text to continue ("The capital of France is the city of")."""
    return bool(re.search(r"[?!.:;)\]\"'”’»]\s*$", prompt))


def answers_in_chat(lm: LM, prompt: str, chat_template: bool | None = None) -> bool:
    """Whether the model answers `prompt` through its chat template: `chat_template` when given (True without a
    template is an error); else on a model with a chat template, a question or instruction goes through it (the
    response as the model gives it to a user) and a text to continue stays plain text, as training documents are."""
    if chat_template is not None:
        return lm.chat(chat_template)
    return bool(getattr(lm.tokenizer, "chat_template", None)) and asks_for_an_answer(prompt)


def end_of_turn(lm: LM) -> str | None:
    """The token that closes an assistant turn in the model's chat template (e.g. <|im_end|>), else its eos token."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        try:
            sentinel = "attrilens-answer"
            turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
            text = tok.apply_chat_template(turn, tokenize=False)
            after = list(tok(text.rsplit(sentinel, 1)[1], add_special_tokens=False)["input_ids"])
            if after and after[0] in set(tok.all_special_ids):
                return tok.convert_ids_to_tokens(after[0])
        except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn: fall back to eos
            pass
    return tok.eos_token


@dataclass(frozen=True)
class Answer:
    """The model's greedy response and how it was produced and scored: `response` as generated in the
    `generated_with` form, `target` that response as scored in the `scored_as` form (the index's)."""

    prompt: str
    response: str
    target: str
    generated_with: str
    scored_as: str


def generate_answer(lm: LM, prompt: str, max_new_tokens: int, chat_template: bool | None = None) -> Answer:
    """The model's greedy response to `prompt` (at most `max_new_tokens`, up to end-of-turn or a line break) in the
    form `answers_in_chat` picks, and the target to score in `lm`'s own form: a response generated through the chat
    template and scored as plain text follows the prompt after a space, as in a document. An empty response is an
    error saying what the model emitted first and what to pass instead."""
    check_prompt(prompt)
    if max_new_tokens < 1:
        raise AttrilensError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    chat = answers_in_chat(lm, prompt, chat_template)
    eot = end_of_turn(lm) if chat else None
    stops = ("\n",) + ((eot,) if eot and eot != lm.tokenizer.eos_token else ())
    response = lm.generate(prompt, max_new_tokens=max_new_tokens, chat_template=chat, stop_strings=stops)
    if not response.strip():
        raise AttrilensError(_empty_message(lm, prompt, chat))
    target = response
    if chat and not lm.use_chat_template and not prompt[-1:].isspace() and not response[:1].isspace():
        target = " " + response
    return Answer(prompt, response, target, prompt_form(chat), prompt_form(lm.use_chat_template))


def _empty_message(lm: LM, prompt: str, chat: bool) -> str:
    """One line: what the model emitted at the first position of an empty response, and what to pass."""
    first = lm.generate_ids([lm.encode_prompt(prompt, chat)], max_new_tokens=1, stop_at_eos=False)[0]
    token = lm.tokenizer.convert_ids_to_tokens(first[0]) if first else "?"
    specials = {lm.tokenizer.eos_token, end_of_turn(lm)} - {None}
    text = lm.tokenizer.decode(first[:1], clean_up_tokenization_spaces=False)
    what = (f"end-of-turn ({token}) at the first token" if token in specials
            else f"{text!r} at the first token, a response of whitespace only")
    if chat or not getattr(lm.tokenizer, "chat_template", None):
        other = "--no-chat-template (continue the prompt as plain text)" if chat else None
    else:
        other = "--chat-template (ask it through the model's chat template)"
    return (f"The model generated an empty response: prompted as {prompt_form(chat)}, it emitted {what}. Pass "
            f"--target TEXT{', or ' + other if other else ''}.")


def generated_response(lm: LM, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy response to `prompt` in `lm`'s own form (at most `max_new_tokens`); an empty one is an
    error naming what the model emitted first."""
    return generate_answer(lm, prompt, max_new_tokens, chat_template=lm.use_chat_template).target
