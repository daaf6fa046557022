"""Prefix KV-cache reuse: run a prefix once, then continue many suffixes from chosen prefix lengths in one
forward — the same computation as running each kept prefix + suffix from scratch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrilens.errors import AttrilensError
from attrilens.lm.forward import Patch, RunOutput


class CacheMixin:
    """`LM`'s prefix cache: `prefix_cache` and `extend` (mixed into `LM`)."""

    @torch.no_grad()
    def prefix_cache(self, prefix_ids: Sequence[int], *, read_layers: Sequence[int] = (),
                     logits_at: Sequence[int] | None = None) -> RunOutput:
        """Run a prefix once (batch of one) and keep its KV cache for `extend` (logits only at `logits_at` if given)."""
        self.check_length(len(prefix_ids), "prefix")
        batch = self.pad_batch([prefix_ids])
        cols = None if logits_at is None else torch.as_tensor([list(logits_at)], dtype=torch.long)
        return self._forward(batch, read_layers=read_layers, keep_cache=True, logits_at=cols)

    @torch.no_grad()
    def extend(
        self,
        prefix: RunOutput,
        keep: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        *,
        read_layers: Sequence[int] = (),
        patches: Sequence[Patch] = (),
        logits_at: Sequence[Sequence[int]] | None = None,
        hide: Sequence[Sequence[int]] | None = None,
        attentions: bool = False,
    ) -> RunOutput:
        """Continue each suffix from the first `keep[r]` tokens of a cached prefix, all rows in one forward.

        Rows may keep different prefix lengths: the cache is cropped to max(keep), the positions a row does
        not keep are masked out, and the row's suffix takes positions keep[r], keep[r]+1, ... — the same
        computation as running prefix[:keep[r]] + suffix from scratch. Suffixes are right-padded. Logits
        are for the suffix positions only (or, with `logits_at`, for those suffix positions of each row, the
        same count per row); patches use positions in the full (kept prefix + suffix) row.
        `hide[r]` (attention knockout): kept-prefix positions row r's suffix may not attend to; the cached prefix
        itself stays as it was computed (with those positions visible). `attentions`: also return the suffix's
        attention weights (eager attention for this forward; keys = the kept prefix, then the suffix).
        """
        from transformers import DynamicCache

        n_prefix = prefix.lengths[0]
        if len(keep) != len(suffixes):
            raise AttrilensError(f"Got {len(keep)} keep lengths for {len(suffixes)} suffixes; pass one per suffix.")
        if hide is not None and (len(hide) != len(keep) or any(not 0 <= p < k for h, k in zip(hide, keep, strict=True)
                                                                for p in h)):
            raise AttrilensError("hide needs one list per suffix of positions inside that row's kept prefix.")
        if any(not 1 <= k <= n_prefix for k in keep):
            raise AttrilensError(f"keep lengths must lie in 1..{n_prefix} (the cached prefix), got {list(keep)}.")
        for k, s in zip(keep, suffixes, strict=True):
            self.check_length(k + len(s))
        if self.sliding_window is not None and len(set(keep)) > 1:
            if attentions:
                raise AttrilensError("Attention weights of rows with different keep lengths are not supported on "
                                     "sliding-window models; extend rows of one keep length together.")
            return self._extend_by_keep(prefix, keep, suffixes, read_layers=read_layers, patches=patches,
                                        logits_at=logits_at, hide=hide)
        width, rows = max(keep), len(suffixes)
        # one copy of the kept prefix per row, made when the cache is built (expand is a view)
        cache = DynamicCache(ddp_cache_data=[
            (layer.keys[..., :width, :].expand(rows, -1, -1, -1), layer.values[..., :width, :].expand(rows, -1, -1, -1))
            for layer in prefix.cache.layers])
        cache_mask = torch.zeros((len(suffixes), width), dtype=torch.long, device=self.device)
        for r, k in enumerate(keep):
            cache_mask[r, :k] = 1
            if hide is not None and hide[r]:
                cache_mask[r, list(hide[r])] = 0
        batch = self.pad_batch(suffixes, padding_side="right")
        batch.position_ids = batch.position_ids + torch.as_tensor(list(keep), device=self.device)[:, None]
        return self._forward(
            batch,
            read_layers=read_layers,
            patches=patches,
            cache=cache,
            cache_mask=cache_mask,
            chunk_start=list(keep),
            logits_at=None if logits_at is None else torch.as_tensor([list(c) for c in logits_at], dtype=torch.long),
            attentions=attentions,
        )

    def _extend_by_keep(self, prefix: RunOutput, keep: Sequence[int], suffixes: Sequence[Sequence[int]], *,
                        read_layers: Sequence[int], patches: Sequence[Patch],
                        logits_at: Sequence[Sequence[int]] | None,
                        hide: Sequence[Sequence[int]] | None = None) -> RunOutput:
        """`extend` one group of rows per keep length, stitched back in row order (right-padded).

        Sliding-window layers place their window by cache index; a row that keeps fewer prefix tokens than
        the batch's widest row would see its window shifted, so such models extend rows of equal keep together.
        """
        groups: dict[int, list[int]] = {}
        for r, k in enumerate(keep):
            groups.setdefault(k, []).append(r)
        width = max(len(s) for s in suffixes)
        logits = None
        hidden: dict[int, torch.Tensor] = {}
        for k, rows in groups.items():
            local = {r: i for i, r in enumerate(rows)}
            sub = [Patch(local[p.row], p.layer, p.position, p.value) for p in patches if p.row in local]
            out = self.extend(prefix, [k] * len(rows), [suffixes[r] for r in rows], read_layers=read_layers,
                              patches=sub, logits_at=None if logits_at is None else [logits_at[r] for r in rows],
                              hide=None if hide is None else [hide[r] for r in rows])
            if logits is None:
                cols = width if logits_at is None else len(logits_at[0])
                logits = out.logits.new_zeros((len(keep), cols, out.logits.shape[-1]))
            logits[rows, : out.logits.shape[1]] = out.logits
            for layer, h in out.hidden.items():
                hidden.setdefault(layer, h.new_zeros((len(keep), width, h.shape[-1])))[rows, : h.shape[1]] = h
        return RunOutput(logits=logits, hidden=hidden, lengths=[len(s) for s in suffixes], offsets=[0] * len(keep))
