"""`CaptureCallback`: a Hugging Face `Trainer` callback that captures every training batch into an index."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from transformers import TrainerCallback

from attrilens.errors import AttrilensError
from attrilens.training.capture.gradient_capture import GradientCapture


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
