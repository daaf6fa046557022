"""`GradientCapture`: hooks on a training model that turn each step's own forward and backward into index rows
(see `attrilens.training.capture` for how and why), one micro-batch at a time."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl
from attrilens.lm import LM
from attrilens.training.capture.features import layer_features, loss_scale
from attrilens.training.capture.storage import CaptureStorage, capture_methods
from attrilens.training.methods import TDA_METHODS, GradientMethod
from attrilens.training.moments import moment_scales, round_moments
from attrilens.training.projection import ALLOCATIONS

# options a capture fixes itself (arguments of GradientCapture, or attach's block_len)
FIXED_OPTIONS = ("proj_dim", "seed", "allocation", "block_len")


@dataclass
class _Batch:
    """One micro-batch being captured: its rows and the per-layer features that arrive during backward."""

    ids: torch.Tensor  # [B, T]
    lengths: list[int]
    counted: torch.Tensor  # [B, T] float, 1 where position t is a target (t ≥ 1)
    names: list[str]
    step: int
    lr: float
    x: dict[str, torch.Tensor] = field(default_factory=dict)
    feats: dict[str, torch.Tensor] = field(default_factory=dict)
    saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (x, δ) kept for a correction
    scale: torch.Tensor | None = None  # c_b per row

    @property
    def arrived(self) -> int:
        """Layers whose output gradient has come back in this backward pass."""
        return len(self.feats) + len(self.saved)


class GradientCapture(CaptureStorage):
    """Writes a grad-dot / grad-cos / TrackStar index of every training sequence of every step, from the training's
    own backward.

    Usage in a training loop (what `demo.trainer.train(..., capture=)` and `demo.lora.finetune_lora` do):

        cap = GradientCapture("idx", method="grad-dot", proj_dim=4096)
        cap.attach(model, tokenizer, block_len=seq_len, optimizer=opt)   # optimizer: TrackStar's correction
        for step, batch in enumerate(batches):
            cap.begin_step(step, lr, names=[...])    # which documents the rows are (optional)
            model(input_ids=..., attention_mask=..., labels=...).loss.backward()
            optimizer.step(); optimizer.zero_grad()
        cap.close(model_dir="out")                   # final fingerprint, corpus, complete manifest

    With a Hugging Face `Trainer`: `callbacks=[CaptureCallback(cap)]`. Shards are float32 by default: a float16
    overflow (`dtype="float16"`, half the disk) stops the training run that hits it.
    """

    def __init__(self, out: Path | str, *, method: str = "grad-dot", proj_dim: int | str | None = "auto", seed: int = 0,
                 allocation: str = "proportional", shard_size: int = 1024, dtype: str = "float32",
                 options: dict[str, Any] | None = None, eval_queries: Sequence[dict] | Path | str | None = None):
        """`options`: the method's other options (TrackStar's correction, use_r, unit_norm, damping, lam, k,
        moment_eps, weights); `eval_queries` ({"prompt", "target"} rows, or a JSONL file of them): TrackStar's
        R_eval, featurised at the final model when the capture closes."""
        name = method.replace("_", "-")
        cls = TDA_METHODS.get(name)
        if not cls.capturable:
            raise AttrilensError(f"Method {method!r} cannot be captured during training ({cls.capture_refusal}). "
                                 f"Capture one of {', '.join(capture_methods())}, or build {method} after training "
                                 "with `attrilens index build`.")
        if dtype not in ("float16", "float32"):
            raise AttrilensError(f"dtype must be 'float16' or 'float32', not {dtype!r}.")
        if shard_size < 1:
            raise AttrilensError(f"shard_size must be positive, got {shard_size}.")
        if (isinstance(proj_dim, str) and proj_dim != "auto") or (isinstance(proj_dim, int) and proj_dim < 1):
            raise AttrilensError(f"proj_dim must be a positive integer, None (full gradients) or 'auto', got "
                                 f"{proj_dim!r}.")
        if allocation not in ALLOCATIONS:
            raise AttrilensError(f"Unknown projection allocation {allocation!r}. Use one of {', '.join(ALLOCATIONS)}.")
        options = dict(options or {})
        fixed = [k for k in FIXED_OPTIONS if k in options]
        estimate = [k for k in cls.corpus_options if k in options]
        if fixed or estimate:
            why = (f"{fixed[0]} is an argument of GradientCapture (or attach's block_len)" if fixed else
                   f"{estimate[0]} is about estimating the second moments from a corpus; a capture reads them from "
                   "the training's optimizer")
            raise AttrilensError(f"Option {(fixed + estimate)[0]!r} cannot be passed in options: {why}. Remove it.")
        if options and not set(cls.option_names()) - set(FIXED_OPTIONS) - set(cls.corpus_options):
            raise AttrilensError(f"{name} takes no further options (got {', '.join(options)}). Remove them.")
        cls.make_options(**options)  # an unknown option or a bad value fails here
        if isinstance(eval_queries, (str, Path)):
            eval_queries = list(iter_jsonl(Path(eval_queries), require=("prompt", "target")))
        self.eval_queries = list(eval_queries or [])
        if self.eval_queries and not cls.uses_eval_queries:
            raise AttrilensError(f"{name} takes no eval queries. Pass none (they are for TrackStar's R_eval).")
        self.out = Path(out)
        self.options = options
        self.method_name, self.proj_dim, self.seed, self.allocation = name, proj_dim, seed, allocation
        self.shard_size, self.dtype = shard_size, dtype
        self.method: GradientMethod | None = None
        self._handles: list[Any] = []
        self._pending: _Batch | None = None
        self._names: list[str] = []  # names of the rows of the next micro-batch(es), from begin_step
        self._lookup: Callable[[list[int]], str] | None = None
        self._buffer: list[tuple[np.ndarray, list[dict]]] = []
        self._rows: list[dict] = []  # {"name", "step", "lr", "tokens"} of every row written or buffered
        self._step, self._lr = 0, 0.0
        self.seconds = 0.0  # time spent in the capture's own hooks and writes
        self.discarded = 0  # training-mode forwards that had no backward (not trained on, not captured)
        self.partial = 0  # rows whose loss skipped some of their tokens (labels -100 inside the row)
        self.optimizer: torch.optim.Optimizer | None = None  # whose second moments correct TrackStar's rows
        self._deferred: list[_Batch] = []  # backward passes waiting for the optimizer's step (their correction)
        self._moments: dict[str, torch.Tensor] | None = None  # the last bias-corrected v̂ used, rounded
        self._moment_step = 0  # the optimizer's step count of those moments

    # ------------------------------------------------------------------ setup
    def attach(self, model: torch.nn.Module, tokenizer, *, block_len: int | None = None, first_step: int = 0,
               name: str | None = None, lookup: Callable[[list[int]], str] | None = None,
               optimizer: torch.optim.Optimizer | None = None) -> None:
        """Hook `model` (in place; its training flag is kept) and open the index directory; a capture left unfinished
        there by an interrupted run of the same settings keeps its rows of steps before `first_step` (resume).
        `optimizer`: the training's Adam(W), whose second moments correct TrackStar's rows (required then)."""
        if self.method is not None:
            raise AttrilensError("This capture is already attached to a model. Use one GradientCapture per run.")
        training = model.training
        # a peft model is featurised as its inner model (the module names LM.from_pretrained(adapter dir) has); the
        # batch is read where the trainer calls it (peft's wrappers call the inner forward without its hooks)
        inner = model.base_model.model if hasattr(model, "peft_config") and hasattr(model, "base_model") else model
        lm = LM(inner, tokenizer, name=name)
        model.train(training)
        cls = TDA_METHODS.get(self.method_name)
        proj_dim = cls.default_proj_dim(lm) if self.proj_dim == "auto" else self.proj_dim
        block_len = lm.max_length if block_len is None else block_len
        opts = cls.make_options(proj_dim=proj_dim, seed=self.seed, allocation=self.allocation, block_len=block_len,
                                **self.options)
        self.lm, self.method, self._lookup = lm, cls(opts, lm), lookup
        self.featurizer = self.method.views[0][0]
        if self.corrects:  # the moments are the optimizer's, read at every step (not estimated from a corpus)
            self.method.moments_source = "optimizer"
        self._raw = self.method.needs_fit  # rows stay raw (float32) until R is fitted at close
        if self.corrects:
            self._check_optimizer(optimizer)
        self.optimizer = optimizer
        self._open(first_step)
        self._step = first_step
        self._model = model
        self._hook(model)

    def _hook(self, model: torch.nn.Module) -> None:
        for n, m in self.featurizer.modules.items():
            self._handles.append(m.register_forward_hook(self._layer_hook(n)))
        self._handles.append(model.register_forward_pre_hook(self._begin_batch, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._end_forward))
        emb = self.lm.model.get_input_embeddings()
        if not emb.weight.requires_grad:  # frozen embeddings (LoRA): δ must still reach the first layers' outputs
            self._handles.append(emb.register_forward_hook(lambda mod, args, out: out.requires_grad_(True)
                                                           if torch.is_grad_enabled() and mod.training else None))

    def detach(self) -> None:
        """Remove every hook (the model trains on as if never captured)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def corrects(self) -> bool:
        """Whether rows are divided by the optimizer's second moments (the method needs the optimizer's state)."""
        return self.method.needs_optimizer_state

    def _check_optimizer(self, optimizer) -> None:
        """The optimizer must be Adam-like and train every featurised weight (its v corrects the rows)."""
        if optimizer is None:
            raise AttrilensError("A TrackStar capture divides each step's gradients by the optimizer's second moments: "
                                 "pass the optimizer, attach(..., optimizer=opt) (the trainers and CaptureCallback "
                                 "do), or capture with options={'correction': False}.")
        trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for n, m in self.featurizer.modules.items():
            if id(m.weight) not in trained:
                raise AttrilensError(f"The optimizer does not train {n}.weight, so it has no second moment to correct "
                                     "its gradient with. Featurise the trained weights (options={'weights': 'lora'} "
                                     "on an adapter) or capture with options={'correction': False}.")

    def _optimizer_moments(self) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """v̂ = v / (1 − β2^t) of every featurised weight from the optimizer's state now, (out, in), rounded as the
        index stores moments; with moment_kind "adafactor" its row and column means (the factored fast path)."""
        opt = self.optimizer
        groups = {id(p): g for g in opt.param_groups for p in g["params"]}
        out, step = {}, 0
        for n, m in self.featurizer.modules.items():
            st = opt.state.get(m.weight, {})
            v = st.get("exp_avg_sq")
            if v is None:
                raise AttrilensError(f"The optimizer holds no second moment (exp_avg_sq) for {n}.weight: TrackStar's "
                                     "capture reads Adam's (Adam, AdamW), after the step's update. Use an Adam-family "
                                     "optimizer, call optimizer.step() before the next begin_step, or capture with "
                                     "options={'correction': False}.")
            step = int(st.get("step", 0))
            beta2 = float(groups[id(m.weight)].get("betas", (0.9, 0.999))[1])
            v = v.detach().float().cpu()
            if step > 0 and beta2 < 1:
                v = v / (1.0 - beta2**step)
            v = v.T if type(m).__name__ == "Conv1D" else v
            out[n] = (v.mean(1), v.mean(0)) if self.method.options.moment_kind == "adafactor" else v.contiguous()
        self._moment_step = step
        return round_moments(out)

    def _drain(self) -> None:
        """Featurise the backward passes that waited for the optimizer's step, corrected by its moments now."""
        if not self._deferred:
            return
        t0 = time.perf_counter()
        self._moments = self._optimizer_moments()
        self.featurizer.set_scales(moment_scales(self._moments, self.method.options.moment_eps))
        batches, self._deferred = self._deferred, []
        for p in batches:
            with torch.no_grad():
                raw = torch.cat([self._layer_features(n, *p.saved.pop(n)).float() for n in self.featurizer.modules],
                                dim=1)
            self._emit(p, raw / p.scale[:, None])
        self.seconds += time.perf_counter() - t0

    def pause(self) -> None:
        """Stop capturing (hooks removed) until `resume`: steps trained meanwhile have no rows."""
        self._finish_pending()
        self._drain()
        self.detach()

    def resume(self) -> None:
        """Capture again after `pause`."""
        if self.method is None:
            raise AttrilensError("This capture was never attached to a model. Call attach first.")
        if not self._handles:
            self._hook(self._model)

    # ------------------------------------------------------------------ per step
    def begin_step(self, step: int, lr: float, names: Sequence[str] | None = None) -> None:
        """The next micro-batches belong to optimizer step `step` (updates applied before it) at learning rate `lr`;
        `names` are their rows' example names in order (default: the lookup given to `attach`, else a hash)."""
        self._finish_pending()
        self._drain()  # the previous step's update is applied: its moments correct its rows
        self._step, self._lr = int(step), float(lr)
        self._names = list(names or [])

    def _begin_batch(self, module, args, kwargs) -> None:
        if not (torch.is_grad_enabled() and module.training):
            return
        t0 = time.perf_counter()
        self._finish_pending()
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise AttrilensError("The captured model was called without input_ids. Pass token ids (not embeddings).")
        mask, labels = kwargs.get("attention_mask"), kwargs.get("labels")
        width = ids.shape[1]
        if mask is None and labels is not None:  # no mask: a row ends at its last labelled token
            last = torch.where(labels != -100, torch.arange(width, device=ids.device)[None], torch.zeros_like(labels))
            lengths = (last.max(1).values + 1).tolist()
        elif mask is None:
            lengths = [width] * ids.shape[0]
        else:
            m = mask.bool()
            lengths = m.sum(1).tolist()
            if not bool((m == (torch.arange(width, device=m.device)[None] < m.sum(1, keepdim=True))).all()):
                raise AttrilensError("Captured batches must be right-padded (an attention mask with zeros only at "
                                     "the end of a row). Set the tokenizer's padding_side='right'.")
        block_len = self.method.options.block_len
        if max(lengths) > block_len:
            raise AttrilensError(f"A training row has {max(lengths)} tokens, more than the capture's block_len "
                                 f"{block_len}. Attach with block_len of at least the training length.")
        pos = torch.arange(width, device=ids.device)[None]
        counted = (pos >= 1) & (pos < torch.tensor(lengths, device=ids.device)[:, None])
        if labels is not None:
            use = labels != -100
            if bool((use & (labels != ids)).any()):
                raise AttrilensError("The labels differ from the input ids at a counted token: captured features are "
                                     "next-token losses on the row itself. Use labels = input_ids (-100 to skip).")
            counted &= use
        names = self._row_names(ids, lengths)
        self._pending = _Batch(ids.detach(), lengths, counted.float(), names, self._step, self._lr)
        self.seconds += time.perf_counter() - t0

    def _row_names(self, ids: torch.Tensor, lengths: list[int]) -> list[str]:
        n = ids.shape[0]
        if self._names:
            if len(self._names) < n:
                raise AttrilensError(f"begin_step named {len(self._names)} rows but the batch has {n}. Pass one name "
                                     "per row of the step's micro-batches.")
            names, self._names = self._names[:n], self._names[n:]
            return names
        rows = [ids[b, : lengths[b]].tolist() for b in range(n)]
        if self._lookup is not None:
            return [self._lookup(r) for r in rows]
        return ["seq-" + hashlib.sha256(json.dumps(r).encode()).hexdigest()[:12] for r in rows]

    def _layer_hook(self, name: str):
        def fn(module, args, output):
            p = self._pending
            if p is None or not torch.is_grad_enabled() or not module.training or not output.requires_grad:
                return
            if name in p.x or name in p.feats:
                raise AttrilensError(f"Module {name} ran twice in one training forward (gradient checkpointing?): "
                                     "its per-example gradient cannot be captured. Turn gradient checkpointing off.")
            p.x[name] = args[0].detach()
            output.register_hook(lambda g: self._on_delta(p, name, g))
        return fn

    def _end_forward(self, module, args, output) -> None:
        p = self._pending
        if p is None or not torch.is_grad_enabled() or not module.training:
            return
        missing = [n for n in self.featurizer.modules if n not in p.x]
        if missing:
            raise AttrilensError(f"No gradient reaches {missing[0]} (and {len(missing) - 1} more) in this training "
                                 "step, so its features cannot be captured. Capture a model whose weights (or "
                                 "inputs) require gradients.")
        logits = output.logits if hasattr(output, "logits") else output[0]
        # the hook must not hold `logits` itself: a tensor whose hook refers to it is a reference cycle that keeps
        # the step's whole autograd graph (its saved activations) alive until a full garbage collection
        values = logits.detach()
        logits.register_hook(lambda g: self._on_logits(p, values, g))
    def _on_logits(self, p: _Batch, logits: torch.Tensor, g: torch.Tensor) -> None:
        """The batch's loss scale per row (`features.loss_scale`), then the batch is finished if every layer is in."""
        t0 = time.perf_counter()
        p.scale = loss_scale(p.ids, p.counted, p.lengths, p.names, logits, g)
        if p.arrived == len(self.featurizer.modules):
            self._finish_batch(p)
        self.seconds += time.perf_counter() - t0

    def _layer_features(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return layer_features(self.featurizer, name, x, delta)

    def _on_delta(self, p: _Batch, name: str, g: torch.Tensor) -> None:
        t0 = time.perf_counter()
        x = p.x.pop(name)
        if self.corrects:  # the correction is known after the optimizer's step: keep x and δ until then
            p.saved[name] = (x, g.detach())
        else:
            with torch.no_grad():
                p.feats[name] = self._layer_features(name, x, g).float()
        if p.arrived == len(self.featurizer.modules) and p.scale is not None:
            self._finish_batch(p)
        self.seconds += time.perf_counter() - t0

    def _finish_batch(self, p: _Batch) -> None:
        self._pending = None
        if self.corrects:
            self._deferred.append(p)
            return
        self._emit(p, torch.cat([p.feats[n] for n in self.featurizer.modules], dim=1) / p.scale[:, None])

    def _emit(self, p: _Batch, raw: torch.Tensor) -> None:
        """Buffer a batch's rows (features of the per-example loss), finished unless R is still to be fitted."""
        live = (p.counted.sum(1) > 0).tolist()
        keep = [b for b in range(len(live)) if live[b]]  # a row with no counted token has no gradient: no example
        self.partial += sum(int(p.counted[b].sum()) != p.lengths[b] - 1 for b in keep)
        feats = (raw[keep] if self._raw else self.method.finish(raw[keep])).float().cpu()
        rows = [{"name": p.names[b], "step": p.step, "lr": p.lr, "tokens": p.ids[b, : p.lengths[b]].tolist()}
                for b in keep]
        if not torch.isfinite(feats).all():
            r = int((~torch.isfinite(feats).all(1)).nonzero()[0, 0])
            raise AttrilensError(f"The captured gradient of {rows[r]['name']} (step {p.step}) contains NaN or inf. "
                                 "Check the training run (the loss diverged?).")
        self._buffer.append((feats.numpy(), rows))
        if sum(len(r) for _, r in self._buffer) >= self.shard_size:
            self._write(full_only=True)

    def _finish_pending(self) -> None:
        p = self._pending
        if p is None:
            return
        if p.arrived and p.scale is None and p.arrived == len(self.featurizer.modules):
            raise AttrilensError("The logits' gradient never arrived in this backward pass: the loss was not computed "
                                 "from the model's logits. Backpropagate the model's causal-LM loss.")
        if p.arrived:  # a backward pass ran but not every layer's gradient came back
            missing = [n for n in self.featurizer.modules if n not in p.feats and n not in p.saved]
            raise AttrilensError(f"The backward pass of step {p.step} gave no gradient for {missing[0]}. Capture a "
                                 "model whose every featurised weight takes part in the loss.")
        self.discarded += 1  # a training-mode forward that was never backpropagated: not trained on
        self._pending = None

    def flush(self) -> None:
        """Write every buffered row now (a short shard): what a trainer calls when it saves its resume state (after
        the optimizer's step: a TrackStar capture corrects the last step's rows with the moments it finds now)."""
        self._finish_pending()
        self._drain()
        self._write()

    def close(self, model_dir: Path | str | None = None) -> Path:
        """Write the last rows, the corpus of captured sequences and the complete manifest naming the final model
        (its weights now); remove the hooks; then the build machine's fit and finish (TrackStar's R, with the
        constructor's eval queries featurised at the final model for R_eval). Returns the index directory
        (`TrainingIndex.open` reads it)."""
        self.flush()
        self.detach()
        if not self._rows:
            raise AttrilensError("No training step was captured (no forward and backward in training mode). Attach "
                                 "the capture before training.")
        return self._finish_index(model_dir)
