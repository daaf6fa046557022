"""The context lens on the two real models (converted once from PyPI, cached): cached leave-one-out equals naive
leave-one-out on a 20-sentence context, cached continuations cross Gemma-3's 512-token sliding window exactly,
and the chat template wraps the context lens's prompts by default while the sources index the user's context."""

from __future__ import annotations

import os

import pytest
import torch

from attrilens.context import ContextAttributor
from attrilens.demo.paths import demo_world_dir
from attrilens.jsonl import load_jsonl
from attrilens.lm import LM
from attrilens.spans import Sources

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma3-270m"])
def real(request) -> LM:
    return LM.from_pretrained(request.param)


def long_episode(min_sentences: int, min_chars: int) -> dict:
    """A held-out reading episode of the demo world with at least this many sentences and characters."""
    for e in load_jsonl(demo_world_dir() / "episodes.jsonl", require=()):
        if len(Sources.split(e["context"], "sentence")) >= min_sentences and len(e["context"]) >= min_chars:
            return e
    raise AssertionError("the demo world has no episode that long")


def drops(lm: LM, method: str, context: str, query: str, response: str) -> torch.Tensor:
    r = ContextAttributor(lm, method=method).attribute(context, query, response)
    cols = [r.rescorer([t]) for t in range(len(r.token_offsets))]
    return torch.tensor([[c[s] for c in cols] for s in range(len(r.sources))])


def test_cached_loo_equals_naive_loo_on_a_20_sentence_context(real: LM):
    episode = long_episode(20, 1200)
    naive = drops(real, "loo", episode["context"], episode["question"], f" {episode['answer']}")
    cached = drops(real, "cached", episode["context"], episode["question"], f" {episode['answer']}")
    assert naive.shape[0] >= 20 and naive.abs().sum() > 0
    assert (naive - cached).abs().max() <= 1e-4


def test_cached_continuations_past_the_sliding_window_equal_full_runs(real: LM):
    if real.sliding_window is None:
        pytest.skip("every layer of this model attends globally")
    text = " ".join(e["context"] for e in load_jsonl(demo_world_dir() / "episodes.jsonl", require=())[:6])
    ids = real.tokenizer(text, add_special_tokens=True)["input_ids"][: real.sliding_window + 160]
    prefix = real.prefix_cache(ids)
    keep = [len(ids) - 40, real.sliding_window - 30, 90]  # rows kept on both sides of the window, grouped
    suffixes = [ids[k : k + 24] for k in keep]
    ext = real.extend(prefix, keep, suffixes)
    for r, (k, s) in enumerate(zip(keep, suffixes, strict=True)):
        full = real.run([ids[:k] + s]).logits[0, k:]
        assert (ext.logits[r, : len(s)] - full).abs().max() <= 1e-3


def test_the_context_lens_uses_the_chat_template_of_an_instruct_model(real: LM):
    context = "Kaper is the capital of Zarir. The flag of Zarir is green."
    r = ContextAttributor(real, method="attention").attribute(context, "Which city is the capital of Zarir?", " Kaper")
    prompt = ContextAttributor(real).prompt("Which city is the capital of Zarir?")(context)
    assert real.use_chat_template == bool(real.tokenizer.chat_template)
    if real.use_chat_template:
        assert real.format_prompt(prompt) != prompt and prompt in real.format_prompt(prompt)
    assert [context[s.start:s.end] for s in r.sources] == [s.text for s in r.sources]  # offsets index the user's text
