"""Teacher-forced scoring: log p of each response token given its prompt, batched by similar length, with the
unembedding run only where response tokens are predicted."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.lm.prompts import length_batches


class ScoringMixin:
    """`LM`'s `logprobs` and `logprobs_ids` (mixed into `LM`)."""

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
