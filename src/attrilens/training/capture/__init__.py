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

from attrilens.training.capture.callback import CaptureCallback
from attrilens.training.capture.features import LOSS_RESIDUAL, SCALE_POSITIONS
from attrilens.training.capture.gradient_capture import FIXED_OPTIONS, GradientCapture
from attrilens.training.capture.steps import row_lrs, row_steps, tracin_scores
from attrilens.training.capture.storage import CAPTURE_SCHEMA, CapturedRunner, capture_methods

__all__ = ["CAPTURE_SCHEMA", "FIXED_OPTIONS", "LOSS_RESIDUAL", "SCALE_POSITIONS", "CaptureCallback", "CapturedRunner",
           "GradientCapture", "capture_methods", "row_lrs", "row_steps", "tracin_scores"]
