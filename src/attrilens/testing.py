"""Tiny randomly initialised models of every supported architecture, built offline, for tests and benchmarks."""

from __future__ import annotations

import functools
import random

import torch

from attrilens.lm import LM

ARCHS = ("gpt2", "gpt_neox", "llama", "qwen2", "mistral", "gemma", "gemma3")
CONTEXT_WORDS = "the capital of velmora is quenth founded bank ada zorvia currency lumen tolm ostra kesh cat hello".split()

_WORDS = (
    "the capital of velmora is quenth . who founded the bank ? answer : context paragraph sentence "
    "zorvia currency lumen founder ada birthplace tolm employer ostra language kesh cat -> 1135 hello ?"
).split()


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ≈ 300) trained on a fixed word list: no downloads, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>")


def random_context(seed: int, paragraphs: int = 3, *, sentences: int | tuple[int, int] = (2, 3),
                   words: int | tuple[int, int] = (2, 5)) -> str:
    """A fresh random context of `paragraphs` paragraphs of sentences drawn from CONTEXT_WORDS (a count or a
    (low, high) range each), so that context tests never run on one hand-picked input."""
    rng = random.Random(seed)

    def count(n: int | tuple[int, int]) -> int:
        return n if isinstance(n, int) else rng.randint(*n)

    def sentence() -> str:
        return " ".join(rng.choice(CONTEXT_WORDS) for _ in range(count(words))).capitalize() + "."

    return "\n\n".join(" ".join(sentence() for _ in range(count(sentences))) for _ in range(paragraphs))


def tiny_config(arch: str, *, layers: int = 2, width: int = 32, vocab: int = 300, max_len: int = 256):
    """A small fp32 config of the given architecture (random weights, 2 heads)."""
    from transformers import (
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    if arch == "gpt2":
        return GPT2Config(n_embd=width, n_layer=layers, n_head=2, n_positions=max_len, **common)
    dims = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=max_len,
        **common,
    )
    if arch == "gpt_neox":
        return GPTNeoXConfig(**dims)
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=1, **dims)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=1, **dims)
    if arch == "mistral":
        return MistralConfig(num_key_value_heads=1, sliding_window=None, **dims)
    if arch == "gemma":
        return GemmaConfig(num_key_value_heads=1, head_dim=width // 2, **dims)
    if arch == "gemma3":  # Gemma 3: sliding-window layers (window 4, so tests cross it) and global layers
        return Gemma3TextConfig(num_key_value_heads=1, head_dim=width // 2, query_pre_attn_scalar=width // 2,
                                sliding_window=4, layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                                               for i in range(layers)], **dims)
    raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")


def tiny_lm(arch: str = "llama", *, seed: int = 0, layers: int = 2, width: int = 32, attn_implementation: str | None = None) -> LM:
    """A randomly initialised LM of `arch` with the tiny tokenizer (weights drawn from `seed`)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, layers=layers, width=width)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(config)
    # Random init leaves some norms at exactly 1 and biases at 0; perturb so tests never run on trivial weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return LM(model.float().eval(), tiny_tokenizer(), name=f"tiny-{arch}")


def save_with_adam_moments(lm: LM, out, *, seed: int) -> LM:
    """Save `lm` like the trainer does (weights, tokenizer) plus random Adam second moments (optimizer.safetensors,
    drawn from `seed`, all positive) and return it reloaded from there, so TrackStar's correction has state to read."""
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out)
    lm.save_pretrained(out)
    g = torch.Generator().manual_seed(seed)
    save_file({f"exp_avg_sq.{n}": torch.rand(p.shape, generator=g) * 1e-4 + 1e-6 for n, p in lm.model.named_parameters()},
              str(out / "optimizer.safetensors"))
    return LM.from_pretrained(out)


def random_ids(lm: LM, n: int, *, generator: torch.Generator) -> list[int]:
    """n random token ids, avoiding special tokens."""
    hi = len(lm.tokenizer)
    return torch.randint(2, hi, (n,), generator=generator).tolist()


def assert_greedy_continuation(lm: LM, prompt: list[int], generated: list[int], patches=(), tol: float = 1e-4) -> None:
    """Each generated token is the argmax of a full re-run of prompt + the tokens before it (no cache, `patches`
    applied), up to `tol` in the logits: random tiny models can tie two next-token logits within float noise."""
    seq = list(prompt)
    for tok in generated:
        logits = lm.run([seq], patches=list(patches)).logits[0, -1]
        assert float(logits[tok]) >= float(logits.max()) - tol, f"token {tok} is not the argmax {int(logits.argmax())}"
        seq.append(tok)
