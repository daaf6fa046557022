"""The tail-patch evaluator (`TailPatcher`: Δ log p(target | prompt) after one optimizer step on one training
block), and `correction_scales`, the other reader of a run's saved AdamW state the training benchmarks share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.training.gradients import has_lora


class TailPatcher:
    """Δ log p(target | prompt) after one optimizer step on one training block (the run's final AdamW settings).

    The step uses the second moments v: v' = β2 v + (1 − β2) g², θ ← θ − η (1 − β1) g / (√v' + ε) with η the
    learning rate and the mean-token loss of the block (as in training): the block's own contribution to Adam's
    momentum (the momentum itself is not saved). v and η are the saved optimizer state and final learning rate
    (`from_optimizer_state`), or, for a downloaded model, v estimated from squared minibatch gradients of every
    parameter over a corpus sample and a chosen η (`from_estimate`).
    """

    def __init__(self, lm, v: dict[str, torch.Tensor], *, lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.lm = lm
        self.params = {n: p.detach() for n, p in lm.model.named_parameters() if n in v}  # v's weights are stepped
        self.v = {n: v[n].float() for n in self.params}
        self.cache: dict[tuple, float] = {}
        self.base: dict = {}

    @classmethod
    def from_optimizer_state(cls, lm, model_dir: Path, lr: float | None = None) -> TailPatcher:
        """The saved AdamW second moments and the run's final learning rate (or `lr`: a schedule that decays to
        zero leaves no step to measure), eps and betas."""
        from safetensors.torch import load_file

        opt = json.loads((Path(model_dir) / "training.json").read_text())["optimizer"]
        sq = load_file(str(Path(model_dir) / "optimizer.safetensors"))
        names = [n for n, _ in lm.model.named_parameters()]
        if has_lora(lm.model):  # a LoRA run: its optimizer trained (and the step moves) the adapter matrices only
            names = [n for n in names if ".lora_A." in n or ".lora_B." in n]
        missing = [n for n in names if f"exp_avg_sq.{n}" not in sq]
        if missing:
            raise AttrilensError(f"{model_dir}/optimizer.safetensors has no second moments for {missing[0]} (and "
                                 f"{len(missing) - 1} more). Use the optimizer state of this model's own run.")
        v = {n: sq[f"exp_avg_sq.{n}"] for n in names}
        return cls(lm, v, lr=float(opt["final_lr"] if lr is None else lr), eps=float(opt["eps"]),
                   betas=tuple(opt["betas"]))

    @classmethod
    def from_estimate(cls, lm, blocks: list[list[int]], *, lr: float, batch_size: int = 8) -> TailPatcher:
        """v = mean over minibatches (of `batch_size` blocks) of the squared gradient of every parameter."""
        model = lm.model
        names = [n for n, _ in model.named_parameters()]
        params = [p for _, p in model.named_parameters()]
        v = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in zip(names, params, strict=True)}
        n_batches = 0
        pad = lm.tokenizer.pad_token_id or 0
        for start in range(0, len(blocks), batch_size):
            rows = blocks[start : start + batch_size]
            width = max(len(b) for b in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, b in enumerate(rows):
                ids[r, : len(b)] = torch.as_tensor(b)
                labels[r, : len(b)] = torch.as_tensor(b)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is not None:
                    v[n].add_(g.float().square())
            n_batches += 1
        return cls(lm, {n: t / max(n_batches, 1) for n, t in v.items()}, lr=lr)

    def _logprob(self, params, prompt_ids, target_ids) -> float:
        from torch.func import functional_call

        ids = torch.tensor([list(prompt_ids) + list(target_ids)])
        with torch.no_grad():
            logits = functional_call(self.lm.model, params, (ids,), {"use_cache": False}).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        pos = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
        return float(logp[pos, ids[0, pos + 1]].sum())

    def _stepped(self, block_tokens) -> dict[str, torch.Tensor]:
        """The parameters after one step on one block."""
        model = self.lm.model
        ids = torch.tensor([list(block_tokens)])
        for p in model.parameters():
            p.grad = None
        named = dict(model.named_parameters())
        names = list(self.params)
        frozen = [n for n in names if not named[n].requires_grad]  # a loaded adapter comes frozen
        for n in frozen:
            named[n].requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
        finally:
            for n in frozen:
                named[n].requires_grad_(False)
        new = {}
        for n, g in zip(names, grads, strict=True):
            if g is None:
                new[n] = self.params[n]
                continue
            v = self.beta2 * self.v[n] + (1 - self.beta2) * g * g
            new[n] = self.params[n] - self.lr * (1 - self.beta1) * g / (v.sqrt() + self.eps)
        return new

    def fill(self, pairs: list[tuple], progress: bool = False) -> None:
        """Compute the missing Δ of (query key, prompt ids, target ids, block index, block tokens) pairs, one step
        per distinct block (every query that needs it is scored on the same stepped parameters)."""
        from tqdm import tqdm

        by_block: dict[int, list[tuple]] = {}
        for qi, prompt_ids, target_ids, bi, block_tokens in pairs:
            if (qi, bi) in self.cache:
                continue
            if qi not in self.base:
                self.base[qi] = self._logprob(self.params, prompt_ids, target_ids)
            by_block.setdefault(int(bi), []).append((qi, prompt_ids, target_ids, block_tokens))
        for bi, rows in tqdm(by_block.items(), desc="tail-patch steps", file=sys.stderr, disable=not progress):
            new = self._stepped(rows[0][3])
            for qi, prompt_ids, target_ids, _ in rows:
                self.cache[(qi, bi)] = self._logprob(new, prompt_ids, target_ids) - self.base[qi]

    def delta(self, qi, prompt_ids, target_ids, bi: int, block_tokens) -> float:
        """Δ log p(target | prompt) of query `qi` after one step on block `bi` (cached)."""
        self.fill([(qi, prompt_ids, target_ids, bi, block_tokens)])
        return self.cache[(qi, int(bi))]

    def pairs(self, key: str, queries: list, blocks, picks: dict, rows: list[int]) -> list[tuple]:
        """The `fill` pairs of queries[qi] (qi in `rows`) with the blocks picks[qi] of each."""
        return [((key, qi), queries[qi].ids[:_plen(queries[qi])], queries[qi].ids[_plen(queries[qi]):], int(b),
                 blocks.tokens[int(b)]) for qi in rows for b in picks[qi]]

    def mean_delta(self, key: str, queries: list, blocks, picks: dict, rows: list[int]) -> float:
        """Mean Δ log p over queries[qi] (Examples, target after the prompt) for qi in `rows`, and the blocks
        picks[qi] of each; `key` names the query set so its cache entries stay apart from another set's."""
        pairs = self.pairs(key, queries, blocks, picks, rows)
        self.fill(pairs)
        return float(np.mean([self.cache[(p[0], p[3])] for p in pairs]))


def saved_or_estimated_patcher(lm, model_dir: Path, blocks, log=lambda *a: None) -> tuple[TailPatcher, str]:
    """The tail-patcher of the run's own AdamW state, or (when that state lost its range, e.g. float16 underflow)
    one whose v is estimated from the corpus' first 64 blocks; and which of the two it is."""
    from attrilens.training.preconditioning import optimizer_state_problem

    refused = optimizer_state_problem(model_dir)
    if not refused:
        return TailPatcher.from_optimizer_state(lm, model_dir), "optimizer state"
    log(f"[bench] {refused}: tail-patch estimates v from 64 blocks instead")
    final_lr = float(json.loads((Path(model_dir) / "training.json").read_text())["optimizer"]["final_lr"])
    return TailPatcher.from_estimate(lm, [list(t) for t in blocks.tokens[:64]], lr=final_lr), "estimated"


def correction_scales(lm, model_dir: Path, featurizer, blocks) -> dict:
    """1/√v per featurised weight from the saved AdamW state, or, when it lost its range, from v estimated
    per parameter over the corpus' first 64 blocks (what TrackStar's "auto" does then)."""
    from attrilens.training.gradients import Example
    from attrilens.training.moments import estimate_second_moments, moment_scales
    from attrilens.training.preconditioning import adam_scales, optimizer_state_problem

    if not optimizer_state_problem(model_dir):
        return adam_scales(model_dir, lm.model, featurizer.modules)
    sample = [Example.block(t) for t in blocks.tokens[:64]]
    return moment_scales(estimate_second_moments(featurizer, sample, kind="adam"), eps=1e-3)


def _plen(ex) -> int:
    return ex.mask.index(1.0)
