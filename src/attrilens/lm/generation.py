"""Generation with patches applied at prefill: greedy or seeded sampling over a KV cache, stopping at eos or a
stop string."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.lm.forward import Patch, output_cache


class GenerationMixin:
    """`LM`'s `generate_ids` and `generate` (mixed into `LM`)."""

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
            cache = output_cache(step)
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
