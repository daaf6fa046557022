"""Exact leave-one-out: per-token response log-probabilities under ablated contexts, naive or KV-cached.

`Scorer` turns contexts into teacher-forced log p of a fixed response's tokens. The naive scorer runs every
prompt from scratch (batched, padded). The cached scorer runs the base prompt + response once, keeps its
KV cache, and for each ablated prompt recomputes only the tokens from the first one that differs (AttriBoT),
with the suffixes of one batch continued from the shared cache in a single forward (`LM.extend`).
Asking a scorer for the base of the context it last based on reuses that result (no new pass). A scorer given
a `record` dict stores every base it computes there (context -> per-token log p), for the faithfulness report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attrilens.context.token_sources import pool_by_source, prompt_token_owner
from attrilens.lm import LM, length_batches
from attrilens.results import Cost, Timer
from attrilens.spans import Sources


def mean_attention(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """[queries, keys] attention of row 0, averaged over layers and heads (fp32, on the CPU)."""
    return torch.stack([a[0].float() for a in attentions]).mean(dim=(0, 1)).cpu()


def partition_key(sources: Sources) -> tuple:
    """What identifies a partition of a context into sources (the text and every source's character span)."""
    return sources.context, tuple((s.start, s.end) for s in sources)


def token_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """log p(targets[t]) from logits[t] (rows aligned), in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp[torch.arange(len(targets)), torch.as_tensor(list(targets), device=logits.device)].cpu()


class Scorer:
    """Teacher-forced log p of one response's tokens given prompts built from contexts; counts its cost."""

    cached = False

    def __init__(self, lm: LM, prompt: Callable[[str], str], response_ids: Sequence[int], *, batch_size: int = 8,
                 cost: Cost | None = None, progress: bool = False, record: dict[str, torch.Tensor] | None = None):
        self.lm = lm
        self.prompt = prompt
        self.response_ids = list(response_ids)
        self.batch_size = max(1, int(batch_size))
        self.cost = cost if cost is not None else Cost()
        self.progress = progress
        self.base_context: str | None = None
        self.base_logprobs: torch.Tensor | None = None
        self.record = record
        self._owners: dict[tuple, list[int]] = {}  # token_owner's memo, by partition_key

    def encode(self, context: str) -> list[int]:
        """The prompt ids for a context (the prompt plus the response must fit the model)."""
        ids = self.lm.encode_prompt(self.prompt(context))
        self.lm.check_length(len(ids) + len(self.response_ids))
        return ids

    def base(self, context: str) -> torch.Tensor:
        """Per-token log p of the response under `context` (the reference every ablation is compared with)."""
        if context != self.base_context:
            self.base_logprobs = self.score([context])[0]
            self.base_context = context
            self._keep(context)
        return self.base_logprobs

    def _keep(self, context: str) -> None:
        """Store the base just computed in `record` (when given)."""
        if self.record is not None:
            self.record[context] = self.base_logprobs

    def token_owner(self, sources: Sources) -> list[int]:
        """Which source each prompt token belongs to (-1: template or question), once per partition of a context."""
        key = partition_key(sources)
        if key not in self._owners:
            self._owners[key] = prompt_token_owner(self.lm, self.prompt, sources)[1]
        return self._owners[key]

    def base_without(self, sources: Sources, drop: Sequence[int]) -> torch.Tensor:
        """Per-token log p of the response with the `drop` sources ablated (by default: removed from the text)."""
        return self.base(sources.ablate(drop))

    def score_without(self, sources: Sources, drops: Sequence[Sequence[int]]) -> torch.Tensor:
        """[len(drops), T] per-token log p with each set of sources ablated (after `base_without` of the context
        they are ablated from; by default each set is removed from the text and the prompt re-scored)."""
        return self.score([sources.ablate(d) for d in drops])

    def response_attention(self, sources: Sources) -> torch.Tensor:
        """[S, T] attention mass from the position predicting each response token to each source's tokens (mean
        over layers and heads): one full eager pass over prompt + response here; one response row when cached."""
        with Timer(self.cost):
            ids = self.encode(sources.context)
            n, T = len(ids), len(self.response_ids)
            out = self.lm.run([ids + self.response_ids], attentions=True)
            self.cost.add(1, n + T)
            attention = mean_attention(out.attentions)[n - 1 : n - 1 + T, :n]
            return pool_by_source(attention, self.token_owner(sources), len(sources))

    def score(self, contexts: Sequence[str]) -> torch.Tensor:
        """[len(contexts), T] per-token log p of the response under each context."""
        with Timer(self.cost):
            ids = [self.encode(c) for c in contexts]
            return self._naive(ids)

    def _naive(self, prompt_ids: list[list[int]]) -> torch.Tensor:
        rows = self.lm.logprobs_ids(prompt_ids, [self.response_ids] * len(prompt_ids), batch_size=self.batch_size)
        self.cost.add(len(prompt_ids), sum(len(p) + len(self.response_ids) for p in prompt_ids))
        return torch.stack(rows) if rows else torch.empty(0, len(self.response_ids))


class CachedScorer(Scorer):
    """AttriBoT cached LOO: reuse the base pass's KV cache up to the first token an ablation changes."""

    cached = True
    max_padding = 0.125  # of a batch's positions (see `length_batches`)

    def base(self, context: str) -> torch.Tensor:
        """Per-token log p under `context`, keeping the KV cache of prompt + response for the ablations."""
        if context == self.base_context:
            return self.base_logprobs
        with Timer(self.cost):
            self.base_ids = self.encode(context)
            full = self.base_ids + self.response_ids
            n = len(self.base_ids)
            self.prefix = self.lm.prefix_cache(full, logits_at=range(n - 1, len(full) - 1))
            self.cost.add(1, len(full))
            self.base_logprobs = token_logprobs(self.prefix.logits[0], self.response_ids)
            self.base_context = context
            self._keep(context)
        return self.base_logprobs

    def response_attention(self, sources: Sources) -> torch.Tensor:
        """[S, T] attention mass per source, read from one response-length row over the full prompt's cache."""
        self.base(sources.context)
        with Timer(self.cost):
            owner = self.token_owner(sources)
            n, T = len(self.base_ids), len(self.response_ids)
            ext = self.lm.extend(self.prefix, [n - 1], [[self.base_ids[n - 1], *self.response_ids[:-1]]],
                                 logits_at=[[0]], attentions=True)
            self.cost.add(1, T)
            # keys: the n - 1 cached prompt positions, then the row itself (its first column is prompt position n - 1)
            return pool_by_source(mean_attention(ext.attentions)[:, :n], owner, len(sources))

    def groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Suffixes continued in one forward: similar lengths (padding costs as much as a token), batch_size rows."""
        return length_batches(lengths, self.batch_size, self.max_padding)

    def keep_length(self, prompt_ids: Sequence[int]) -> int:
        """How many leading tokens of the base pass an ablated prompt can reuse (0: none, run it from scratch)."""
        full = self.base_ids + self.response_ids
        seq = list(prompt_ids) + self.response_ids
        d = 0
        for a, b in zip(full, seq, strict=False):
            if a != b:
                break
            d += 1
        # The logit predicting the first response token sits at position len(prompt) - 1: recompute from there.
        return min(d, len(prompt_ids) - 1)

    def score(self, contexts: Sequence[str]) -> torch.Tensor:
        """[len(contexts), T] per-token log p, each prompt continued from the base pass's cache."""
        if self.base_context is None:
            raise RuntimeError("CachedScorer.base(context) must run before score().")
        with Timer(self.cost):
            ids = [self.encode(c) for c in contexts]
            keep = [self.keep_length(p) for p in ids]
            out = torch.empty(len(ids), len(self.response_ids))
            fresh = [i for i, k in enumerate(keep) if k < 1]
            if fresh:
                out[fresh] = self._naive([ids[i] for i in fresh])
            T = len(self.response_ids)
            reuse = [i for i, k in enumerate(keep) if k >= 1]
            suffix = {i: ids[i][keep[i] :] + self.response_ids for i in reuse}
            for group in self.groups([len(suffix[i]) for i in reuse]):
                rows = [reuse[g] for g in group]
                # the suffix column whose logit predicts response token 0, then the T - 1 after it
                first = [len(ids[i]) - 1 - keep[i] for i in rows]
                ext = self.lm.extend(self.prefix, [keep[i] for i in rows], [suffix[i] for i in rows],
                                     logits_at=[range(f, f + T) for f in first])
                self.cost.add(len(rows), sum(len(suffix[i]) for i in rows))
                for r, i in enumerate(rows):
                    out[i] = token_logprobs(ext.logits[r], self.response_ids)
            return out


def loo(scorer: Scorer, sources: Sources, *, base_drop: Sequence[int] = (), candidates: Sequence[int] | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out inside the context C' = context with `base_drop` already removed.

    Returns (base per-token log p [T], per-source per-token log-prob drop [S, T]); sources not in
    `candidates` (or in `base_drop`) get NaN rows. score(s) = Σ_t drop[s, t] = LL(r | C') − LL(r | C' ∖ s).
    When the scorer's last base was C' already, that pass (and its cache) is reused.
    """
    base_drop = list(base_drop)
    cand = [i for i in (range(len(sources)) if candidates is None else candidates) if i not in set(base_drop)]
    base = scorer.base_without(sources, base_drop)
    ablated = scorer.score_without(sources, [[*base_drop, i] for i in cand])
    drop = torch.full((len(sources), len(scorer.response_ids)), float("nan"))
    if cand:
        drop[cand] = base[None, :] - ablated
    return base, drop
