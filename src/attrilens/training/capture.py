"""Gradients captured during training: index features for every training sequence of every step, taken from the
trainer's own forward and backward pass, so that indexing costs no second pass over the corpus.

How: a forward hook on every featurised weight matrix keeps its input x, and a tensor hook on its output receives
the output gradient δ while the trainer runs `loss.backward()`; the layer's features P_L (Σ_t δ_t x_tᵀ) P_Rᵀ are
projected right there with `gradients.Featurizer`'s projections (same seed, same features), contracted in the
cheaper of two orders for the layer's shape, so no per-example gradient is ever formed. A pre-hook on the model reads the batch (input_ids, attention_mask,
labels) and a hook on the logits' gradient measures the loss scale of each row (below).

The loss: an index row is the gradient of the per-example sum Σ_t m_t · nll_t over the tokens that count (see
`gradients`). A trainer optimises c_b times that sum for row b (Hugging Face's mean token loss: c = 1/(tokens that
count in the batch), divided again over gradient-accumulation steps). Whatever the reduction, the gradient of the
loss w.r.t. the logits of a counted position is c_b·(softmax − onehot(target)): c_b is fitted from it (least
squares over the row's positions) and the row's features are divided by it, so captured rows are on the index's
scale. A loss of another form (label smoothing, a custom loss, targets that are not the next input token) leaves
a residual and is refused by name.

The checkpoint of a row: a row captured at step s (s optimizer updates already applied) is the gradient at the
parameters that step trained from — what a post-hoc build at the checkpoint saved after s updates
(`checkpoints/step-s`) gives. Rows are one per training sequence per step: a document seen in five epochs has five
rows, each with its own step; a row that packs several documents (the tiny-model trainer) is one example named
"a+b+c". In the written index a row's `block` is its step, and the manifest's "capture" lists [first row, rows,
step, learning rate] runs. The manifest names the final model (open and trace the index with the trained model:
the query's gradient is taken there).

Methods: grad-dot and grad-cos (their stored features are the gradient itself, whatever the parameters). TracIn
(Σ_s η_s ⟨g_s(z), g_s(q)⟩) is `tracin_scores`: Σ over a document's rows of η_s · grad-dot score, the query's
gradient fixed at the final model (the exact TracIn needs the query's gradient at every step).

TrackStar (as Bergson's training-time collector does, with the moments of the step itself): a row's gradient is
divided by √(v̂ + ε·mean v̂) before projecting, v̂ the optimizer's Adam second moment after that step's update,
bias-corrected (v / (1 − β2^t): rows of early and late steps on one scale) — the preconditioner the update of
that step was divided by; by default (moment_kind "adafactor", as TrackStar's estimate) v̂ as its row and column
means, r cᵀ / mean(r), so the factored featurisation applies and no per-example gradient is formed; "adam" divides
elementwise (each row's per-layer gradient formed: slower). The layer's x and δ are kept until the optimizer has stepped (the next `begin_step`,
`flush` or `close`): one step's activations, as the training itself holds. R is fitted at `close` from the
captured rows (Σ ΦᵀΦ when there are more rows than features, as a distributed build reduces it; R_eval from
optional eval queries at the final model), and the rows are finished (R^(−1/2), unit norm) into the index then;
queries are corrected with the final v̂, stored in the index. A post-hoc build differs: it corrects every
document with the final moments at the final model. DataInf and BM25 are built after training.
"""

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
from transformers import TrainerCallback

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl
from attrilens.lm import LM
from attrilens.training.corpus import Corpus
from attrilens.training.gradients import FactoredScale
from attrilens.training.index import eval_examples, eval_queries_entry, fit_on_raw_shards
from attrilens.training.methods import TDA_METHODS, GradientMethod
from attrilens.training.moments import moment_scales, round_moments
from attrilens.training.projection import ALLOCATIONS
from attrilens.training.store import (
    INDEX_SCHEMA,
    MANIFEST,
    PRECONDITIONER,
    atomic_save,
    file_record,
    save_tensors,
    to_dtype,
    write_json,
)

CAPTURE_METHODS = ("grad-dot", "grad-cos", "trackstar")
# TrackStar options about estimating the second moments from a corpus: a capture takes them from the optimizer
ESTIMATE_OPTIONS = ("second_moments", "moment_sample", "moment_batch")
CAPTURE_SCHEMA = "attrilens/capture/v1"
# Largest |G − c_b·(softmax − onehot)| / |G| accepted for a row: float32 noise is ~1e-7; a different loss is O(1).
LOSS_RESIDUAL = 1e-3
SCALE_POSITIONS = 8  # counted positions per row that the loss scale is fitted and checked on


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


class GradientCapture:
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
        if name not in CAPTURE_METHODS:
            why = {"tracin": "capture grad-dot and sum a document's rows with tracin_scores: TracIn over every step"
                   }.get(name, "its features are not one loss gradient per example")
            raise AttrilensError(f"Method {method!r} cannot be captured during training ({why}). Capture one of "
                                 f"{', '.join(CAPTURE_METHODS)}, or build {method} after training with "
                                 "`attrilens index build`.")
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
        fixed = [k for k in ("proj_dim", "seed", "allocation", "block_len") if k in options]
        estimate = [k for k in ESTIMATE_OPTIONS if k in options]
        if fixed or estimate:
            why = (f"{fixed[0]} is an argument of GradientCapture (or attach's block_len)" if fixed else
                   f"{estimate[0]} is about estimating the second moments from a corpus; a capture reads them from "
                   "the training's optimizer")
            raise AttrilensError(f"Option {(fixed + estimate)[0]!r} cannot be passed in options: {why}. Remove it.")
        if options and name != "trackstar":
            raise AttrilensError(f"{name} takes no further options (got {', '.join(options)}). Remove them.")
        cls = TDA_METHODS.get(name)
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
        """Whether rows are divided by the optimizer's second moments (TrackStar with its correction on)."""
        return self.method_name == "trackstar" and bool(getattr(self.method.options, "correction", False))

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
        """c_b of each row: at a counted position the logits' gradient is c_b · (softmax − onehot(target)), and at
        the row's last token (which predicts nothing) it is 0. Fitted (least squares) and checked on up to
        `SCALE_POSITIONS` counted positions per row: c_b is one number, and all B × T × vocab would cost a pass."""
        t0 = time.perf_counter()
        with torch.no_grad():
            n_rows = p.ids.shape[0]
            counted = p.counted.to(g.device) > 0
            rank = counted.long().cumsum(1) - 1  # rank of each counted position within its row
            n = counted.sum(1, keepdim=True)  # evenly spread ranks 0..n-1 (all of them when n ≤ SCALE_POSITIONS)
            k = torch.arange(SCALE_POSITIONS, device=g.device)[None]
            picks = (k * (n - 1) / max(SCALE_POSITIONS - 1, 1)).round().long()  # [B, K]
            r, t = (counted & (rank[:, :, None] == picks[:, None, :]).any(-1)).nonzero(as_tuple=True)
            c = torch.ones(n_rows, dtype=torch.float64, device=g.device)
            if len(r):
                prob = torch.softmax(logits[r, t - 1].double(), dim=-1)
                y = p.ids[r, t]
                at = torch.arange(len(r), device=g.device)
                d = prob.clone()
                d[at, y] = -(prob.sum(-1) - prob[at, y])  # p_y − 1, without cancellation when p_y ≈ 1
                gg = g[r, t - 1].double()
                per_row = torch.zeros(n_rows, 3, dtype=torch.float64, device=g.device)
                per_row.index_add_(0, r, torch.stack([(gg * d).sum(-1), (d * d).sum(-1), (gg * gg).sum(-1)], 1))
                live = per_row[:, 1] > 0
                c = torch.where(live, per_row[:, 0] / per_row[:, 1].clamp_min(1e-300), c)
                resid = torch.zeros(n_rows, dtype=torch.float64, device=g.device)
                resid.index_add_(0, r, (gg - c[r, None] * d).pow(2).sum(-1))
                last = torch.tensor(p.lengths, device=g.device) - 1
                resid += g[torch.arange(n_rows, device=g.device), last].double().pow(2).sum(-1)
                rel = resid.sqrt() / per_row[:, 2].sqrt().clamp_min(1e-300)
                bad = live & ((rel > LOSS_RESIDUAL) | ~(c > 0))
                if bool(bad.any()):
                    b = int(bad.nonzero()[0, 0])
                    raise AttrilensError(f"The training loss of row {p.names[b]} is not a sum of next-token "
                                         f"cross-entropies of its tokens (relative residual {float(rel[b]):.2g}): its "
                                         "captured gradient would not be an index row. Train with the plain causal-LM "
                                         "loss (no label smoothing) or build the index after training.")
            p.scale = c.float().to(g.device)
        if p.arrived == len(self.featurizer.modules):
            self._finish_batch(p)
        self.seconds += time.perf_counter() - t0

    def _layer_features(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """P_L (Σ_t δ_t x_tᵀ) P_Rᵀ of each row, contracted in the cheapest order for this layer's shape: the
        featuriser's factored order Σ_t (P_L δ_t)(P_R x_t)ᵀ costs T·(out·k_o + in·k_i) per row, P_R first
        P_L (Σ_t δ_t (P_R x_t)ᵀ) costs T·k_i·(out + in) + k_o·out·k_i — 12× less for the demo model's unembedding
        (out 2048, k_o 180, k_i 11). The same numbers up to float32 rounding (associativity)."""
        proj = self.featurizer.projections[name]
        scale = self.featurizer.scales[name] if self.featurizer.scales is not None else None
        if proj.left is None or (scale is not None and not isinstance(scale, FactoredScale)):
            return self.featurizer.layer_features(name, x, delta)  # elementwise scales: per-example G is formed
        (k_o, out), (k_i, inn), t = proj.left.shape, proj.right.shape, x.shape[1]
        factored = t * (out * k_o + inn * k_i + k_o * k_i)
        right_first = t * k_i * (out + inn) + k_o * out * k_i
        if right_first >= factored:  # the featuriser's own order and operations (the same bits)
            return self.featurizer.layer_features(name, x, delta)
        x, delta = x.float(), delta.float()
        if scale is not None:  # a row × column correction diag(r) G diag(c): folded into δ and x, as the featuriser
            delta, x = delta * scale.row.to(delta.device), x * scale.col.to(x.device)
        b = x @ proj.right.T.to(x.device)  # [B, T, k_i]
        m = torch.einsum("bto,btj->boj", delta, b)  # [B, out, k_i]
        return (proj.left.to(x.device) @ m).reshape(x.shape[0], -1)

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

    # ------------------------------------------------------------------ storage
    def _identity(self) -> dict[str, Any]:
        return {"schema": INDEX_SCHEMA, "method": self.method.name, "options": self.method.options.to_dict(),
                "dtype": self.dtype, "shard_size": self.shard_size}

    def _open(self, first_step: int) -> None:
        """Create the index directory, or resume an unfinished capture of the same settings from `first_step`."""
        self.out.mkdir(parents=True, exist_ok=True)
        mpath = self.out / MANIFEST
        old = None
        if mpath.is_file():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("capture", {}).get("schema") != CAPTURE_SCHEMA or old.get("complete"):
                raise AttrilensError(f"{self.out} already holds an index. Pass another directory to capture into, "
                                     "or delete it.")
            diff = [k for k, v in self._identity().items() if old.get(k) != v]
            if diff:
                raise AttrilensError(f"{self.out} holds an unfinished capture with other settings ({', '.join(diff)}). "
                                     "Use the same settings, another directory, or delete it.")
        self.manifest = {**self._identity(), "stage": "capturing", "complete": False, "shards": [], "raw_shards": [],
                         "capture": {"schema": CAPTURE_SCHEMA}}
        self.manifest.update(self.method.layout())
        (self.out / "shards").mkdir(exist_ok=True)
        kept = []
        for s in sorted(old["shards"], key=lambda s: s["start"]) if old else []:
            try:
                rows = json.loads((self.out / s["rows_file"]).read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                raise AttrilensError(f"The unfinished capture in {self.out} lost {s.get('rows_file')}. Delete the "
                                     "directory and train again (or capture into another one).") from None
            keep = [r for r in rows if r["step"] < first_step]
            if len(keep) < len(rows):  # rows of steps the resumed run trains again
                if keep:
                    arr = np.load(self.out / s["file"], allow_pickle=False)[: len(keep)]
                    self._buffer.append((arr.astype(np.float32), keep))
                break
            kept.append(s)
            self._rows += rows
        for p in self.out.glob("shards/*"):  # everything not kept is rewritten
            if p.name not in {Path(s[k]).name for s in kept for k in ("file", "rows_file")}:
                p.unlink()
        self.manifest["shards"] = kept
        write_json(mpath, self.manifest)

    def _write(self, full_only: bool = False) -> None:
        """Write buffered rows as shards (only whole shards of `shard_size` rows when `full_only`)."""
        t0 = time.perf_counter()
        feats = np.concatenate([f for f, _ in self._buffer]) if self._buffer else np.zeros((0, self.method.dim))
        rows = [r for _, rs in self._buffer for r in rs]
        start = 0
        while len(rows) - start >= (self.shard_size if full_only else 1):
            n = min(self.shard_size, len(rows) - start)
            chunk, meta = feats[start : start + n], rows[start : start + n]
            k = len(self.manifest["shards"])
            first = sum(s["rows"] for s in self.manifest["shards"])
            path, rpath = self.out / "shards" / f"shard-{k:05d}.npy", self.out / "shards" / f"rows-{k:05d}.json"
            arr = to_dtype(torch.from_numpy(chunk), "float32" if self._raw else self.dtype, _row_labels(meta))
            write_json(rpath, {"rows": meta})
            sha = atomic_save(path, arr)
            self.manifest["shards"].append({"file": f"shards/{path.name}", "start": first, "rows": n, "sha256": sha,
                                            "rows_file": f"shards/{rpath.name}"})
            write_json(self.out / MANIFEST, self.manifest)
            self._rows += meta
            start += n
        self._buffer = [(feats[start:], rows[start:])] if start < len(rows) else []
        self.seconds += time.perf_counter() - t0

    def _finish_trackstar(self) -> list[Path]:
        """Fit R on the captured raw rows (and the eval queries at the final model), store it and the final moments
        the queries are corrected with, and write finished shards beside the raw ones; the manifest (written by
        `close`) switches to them. Returns the raw shard files, to delete once it has."""
        m, start = self.method, time.perf_counter()
        if self.corrects:
            if self._moments is None:
                raise AttrilensError("No optimizer step was taken while capturing, so there are no second moments to "
                                     "correct with. Train at least one step, or capture with "
                                     "options={'correction': False}.")
            m.use_moments(self._moments, len(self._rows))
        manifest, raw_files = self.manifest, []
        if self._raw:
            ordered = sorted(manifest["shards"], key=lambda s: s["start"])
            eval_raw = m.featurize(eval_examples(self.lm, self.eval_queries)) if self.eval_queries else None
            manifest.update(fit_on_raw_shards(m, [self.out / s["file"] for s in ordered], len(self._rows), eval_raw))
            finished = []
            for k, s in enumerate(ordered):
                rows = self._rows[s["start"] : s["start"] + s["rows"]]
                x = m.finish(torch.from_numpy(np.load(self.out / s["file"]).astype(np.float32, copy=False)))
                arr = to_dtype(x, self.dtype, _row_labels(rows))
                path = self.out / "shards" / f"finished-{k:05d}.npy"
                finished.append({**s, "file": f"shards/{path.name}", "sha256": atomic_save(path, arr)})
            manifest["shards"], raw_files = finished, [self.out / s["file"] for s in ordered]
        save_tensors(self.out / PRECONDITIONER, m.state())
        manifest["preconditioner"] = file_record(self.out / PRECONDITIONER)
        manifest.update(m.layout())
        manifest["second_moments"] = {"source": None} if not self.corrects else {
            "source": "optimizer", "captured": True, "kind": m.options.moment_kind, "eps": m.options.moment_eps,
            "rows": "each step's rows divided by √(v̂ + eps·mean v̂), v̂ = the optimizer's exp_avg_sq after that "
                    "step's update / (1 − β2^t)" + (" as its row × column means (r cᵀ / mean r)"
                                                    if m.options.moment_kind == "adafactor" else ""),
            "queries": f"the same with the final v̂ (optimizer step {self._moment_step}), stored in "
                       f"{PRECONDITIONER}"}
        self.seconds += time.perf_counter() - start
        return raw_files

    def flush(self) -> None:
        """Write every buffered row now (a short shard): what a trainer calls when it saves its resume state (after
        the optimizer's step: a TrackStar capture corrects the last step's rows with the moments it finds now)."""
        self._finish_pending()
        self._drain()
        self._write()

    def close(self, model_dir: Path | str | None = None) -> Path:
        """Write the last rows, the corpus of captured sequences and the complete manifest naming the final model
        (its weights now); remove the hooks; for TrackStar, fit R (with the constructor's eval queries, featurised at
        the final model, for R_eval) and finish the rows. Returns the index directory (`TrainingIndex.open` reads it)."""
        self.flush()
        self.detach()
        if not self._rows:
            raise AttrilensError("No training step was captured (no forward and backward in training mode). Attach "
                                 "the capture before training.")
        model = self.lm.model
        training = model.training
        final = LM(model, self.lm.tokenizer, name=str(model_dir) if model_dir else self.lm.name)
        model.train(training)
        raw_files = self._finish_trackstar() if self.method_name == "trackstar" else []
        model.train(training)
        tok = self.lm.tokenizer
        rows = self._rows
        block_len = self.method.options.block_len
        h = hashlib.sha256(f"captured block_len={block_len}\n".encode())
        for r in rows:
            h.update(json.dumps([r["name"], r["step"], r["tokens"]]).encode())
        texts = [tok.decode(r["tokens"], skip_special_tokens=True, clean_up_tokenization_spaces=False) for r in rows]
        corpus = Corpus([r["name"] for r in rows], [r["step"] for r in rows], texts, [r["tokens"] for r in rows],
                        block_len, h.hexdigest())
        corpus.to_parquet(self.out / "corpus.parquet")
        runs: list[list] = []
        for i, r in enumerate(rows):
            if runs and runs[-1][2] == r["step"] and runs[-1][3] == r["lr"] and runs[-1][0] + runs[-1][1] == i:
                runs[-1][1] += 1
            else:
                runs.append([i, 1, r["step"], r["lr"]])
        m = self.manifest
        m.update({
            "model": {"fingerprint": final.fingerprint(), "name": final.name},
            "model_dir": str(model_dir) if model_dir else None,
            "chat_template": False,
            "corpus": {"fingerprint": corpus.fingerprint, "n_blocks": len(corpus), "n_documents": len(set(corpus.docs)),
                       "block_len": block_len},
            "eval_queries": eval_queries_entry(self.eval_queries),
            "bytes_per_example": self.method.dim * (2 if self.dtype == "float16" else 4),
            "stage": "done", "complete": True,
        })
        m["capture"].update({
            "rows": "one per training sequence per optimizer step; a row's block is its step",
            "gradient_at": "the parameters the row's step trained from (after `step` optimizer updates): a post-hoc "
                           "build at checkpoints/step-<step> gives the same row",
            "loss": "per-example sum of next-token losses (the trainer's loss divided by its per-row scale)",
            "model": "final: the manifest's model is the model at the end of training (queries are featurised there)",
            "steps": runs, "first_step": rows[0]["step"], "last_step": rows[-1]["step"],
            "n_steps": len({r["step"] for r in rows}),
            "seconds": round(self.seconds, 3), "forwards_without_backward": self.discarded,
            # rows whose labels skipped tokens inside them: their features are of that loss, which a post-hoc
            # build of the stored tokens (every token after the first counts) does not reproduce
            "rows_with_partial_loss": self.partial,
        })
        write_json(self.out / MANIFEST, m)  # the one switch to the finished index
        for f in raw_files:
            f.unlink(missing_ok=True)
        return self.out


def _row_labels(rows: Sequence[dict]) -> list[str]:
    """How a captured row is named in an error about its features: its example and step."""
    return [f"{r['name']} (step {r['step']})" for r in rows]


def row_steps(manifest: dict) -> np.ndarray:
    """The step of every row of a captured index (from the manifest's runs)."""
    return _expand(manifest, 2).astype(np.int64)


def row_lrs(manifest: dict) -> np.ndarray:
    """The learning rate of every row of a captured index."""
    return _expand(manifest, 3)


def _expand(manifest: dict, col: int) -> np.ndarray:
    cap = manifest.get("capture") or {}
    if cap.get("schema") != CAPTURE_SCHEMA or "steps" not in cap:
        raise AttrilensError("This index was not captured during training (its manifest has no capture steps). "
                             "Use an index written by GradientCapture / `attrilens train --capture`.")
    out = np.zeros(manifest["corpus"]["n_blocks"])
    for start, n, step, lr in cap["steps"]:
        out[start : start + n] = (step, lr)[col - 2]
    return out


def tracin_scores(index, scores: np.ndarray) -> dict[str, float]:
    """TracIn from a captured grad-dot index: Σ over each example's rows of η_step · score (query at the final model).

    `scores` are `index.scores(query)` of every row; returns {example name: score}, highest first."""
    if index.method_name != "grad-dot":
        raise AttrilensError(f"TracIn sums raw gradient dot products; this index is {index.method_name}. Capture "
                             "with method grad-dot.")
    lrs = row_lrs(index.manifest)
    out: dict[str, float] = {}
    for name, s, lr in zip(index.corpus.docs, scores.tolist(), lrs.tolist(), strict=True):
        out[name] = out.get(name, 0.0) + lr * s
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class CaptureCallback(TrainerCallback):
    """A Hugging Face `Trainer` callback: capture the features of every training batch into `capture`'s index.

    `documents` ({"id", "text"} rows) name the captured rows by their document (a row whose tokens are a document's,
    tokenised as the index does, eos appended; else "seq-<hash>"); `block_len` defaults to the model's context."""

    def __init__(self, capture: GradientCapture, *, documents: Sequence[dict] | None = None, tokenizer=None,
                 block_len: int | None = None):
        self.capture, self.documents, self.tokenizer, self.block_len = capture, documents, tokenizer, block_len

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tok = self.tokenizer or processing_class
        if tok is None:
            raise AttrilensError("CaptureCallback needs the tokenizer: pass tokenizer= or the Trainer's "
                                 "processing_class.")
        lookup = None
        if self.documents:
            enc = tok([d["text"] for d in self.documents], add_special_tokens=False)["input_ids"]
            eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
            table = {tuple(e + eos): str(d.get("id", k)) for k, (d, e) in enumerate(zip(self.documents, enc, strict=True))}
            table.update({tuple(e): str(d.get("id", k)) for k, (d, e) in enumerate(zip(self.documents, enc, strict=True))
                          if tuple(e) not in table})

            def lookup(tokens: list[int]) -> str:
                return table.get(tuple(tokens)) or "seq-" + hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:12]
        self.capture.attach(model, tok, block_len=self.block_len, first_step=state.global_step, name=args.output_dir,
                            lookup=lookup, optimizer=kwargs.get("optimizer"))

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if lr_scheduler is not None:
            lr = lr_scheduler.get_last_lr()[0]
        else:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else float("nan")
        self.capture.begin_step(state.global_step, lr)

    def on_save(self, args, state, control, **kwargs):
        self.capture.flush()  # rows of the steps a resumed run will not train again are on disk

    def on_train_end(self, args, state, control, **kwargs):
        self.capture.close(model_dir=args.output_dir)
