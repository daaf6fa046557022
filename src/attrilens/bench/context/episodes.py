"""The context benchmark's episodes: the world's held-out reading episodes that fit the model, the target's
greedy response to each (its first sentence, timed) and whether it gives the answer."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from attrilens.context import ContextAttributor
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.workflows.world import split_sentences


def is_correct(response: str, answer: str) -> bool:
    """Whether the response gives the episode's answer: the answer appears in it as a whole word (case-sensitive).

    A chat model answers in a sentence ("The capital of Kebir is Kaper."); the demo reader answers " Kaper".
    """
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", response) is not None


def first_sentence(text: str) -> str:
    """The text up to and including its first sentence end ('.', '!' or '?' before whitespace), else all of it."""
    match = re.search(r"[.!?](?=\s)", text)
    return text[: match.end()] if match else text


def _fits(lm: LM, episode: dict, room: int = 12) -> bool:
    """Whether the episode's prompt plus `room` response tokens fits in the model's context."""
    prompt = ContextAttributor(lm).prompt(episode["question"])(episode["context"])
    try:
        lm.check_length(len(lm.encode_prompt(prompt)) + room)
    except AttrilensError:
        return False
    return True


def load_episodes(world: Path, n: int | None, min_sentences: int = 20, lm: LM | None = None,
                  room: int = 12) -> list[dict]:
    """The first n held-out episodes with at least `min_sentences` sentences (that fit `lm`'s context with `room`
    response tokens, if given); n=None: all of them."""
    rows = [e for e in load_jsonl(Path(world) / "episodes.jsonl", require=("context", "question", "answer"))
            if e.get("split") == "heldout" and len(split_sentences(e["context"])) >= min_sentences
            and (lm is None or _fits(lm, e, room))]
    if n is not None and len(rows) < n:
        raise AttrilensError(f"{world} has only {len(rows)} held-out episodes with >= {min_sentences} sentences; "
                             f"pass --episodes {len(rows)} or a larger world.")
    return rows if n is None else rows[:n]


def respond(lm: LM, episode: dict, max_new_tokens: int = 8) -> tuple[str, float]:
    """The target's greedy response to the episode (its first sentence; the gold answer if empty) and the seconds
    generation took."""
    prompt = ContextAttributor(lm).prompt(episode["question"])(episode["context"])
    t0 = time.perf_counter()
    response = first_sentence(lm.generate(prompt, max_new_tokens=max_new_tokens))
    seconds = time.perf_counter() - t0
    return (response if response.strip() else f" {episode['answer']}"), seconds


def screen(lm: LM, episodes: Sequence[dict], max_new_tokens: int = 8) -> list[dict]:
    """Each episode's greedy response, whether it gives the answer, and the generation time."""
    from tqdm import tqdm

    out = []
    for e in tqdm(episodes, desc="greedy answers", file=sys.stderr):
        response, seconds = respond(lm, e, max_new_tokens)
        out.append({"id": e["id"], "response": response, "correct": is_correct(response, e["answer"]),
                    "gen_seconds": seconds})
    return out
