"""From text to the token rows a forward takes: the chat template, prompt and response encoding with their
checks, context-length checks, and padded batches (`Batch`, `length_batches`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from attrilens.errors import AttrilensError

_LM = TypeVar("_LM", bound="PromptMixin")


@dataclass
class Batch:
    """A padded batch: ids, attention mask, position ids, and where each row's real tokens start."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]
    offsets: list[int]


def length_batches(lengths: Sequence[int], max_rows: int, max_padding: float = 0.125) -> list[list[int]]:
    """Row indices grouped for padded batches: sorted by length, at most `max_rows` rows, and a new batch whenever
    padding would exceed `max_padding` of the batch — on a CPU, padded positions cost as much as real ones."""
    if max_rows < 1:
        raise AttrilensError(f"batch_size must be at least 1, got {max_rows}.")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        rows = batches[-1] if batches else None
        if rows and len(rows) < max_rows:
            total = sum(lengths[j] for j in rows) + lengths[i]
            if 1 - total / (lengths[i] * (len(rows) + 1)) <= max_padding:
                rows.append(i)
                continue
        batches.append([i])
    return batches


class PromptMixin:
    """`LM`'s tokenisation: chat template, prompt/response ids, length checks, padding (mixed into `LM`)."""

    def chat(self, chat_template: bool | None = None) -> bool:
        """Whether a prompt is wrapped in the chat template: `chat_template` when given, else this LM's default."""
        if chat_template is None:
            return self.use_chat_template
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise AttrilensError("The chat template was asked for, but this model's tokenizer has none. "
                                 "Pass --no-chat-template (chat_template=False).")
        return bool(chat_template)

    def with_chat_template(self: _LM, chat_template: bool | None) -> _LM:
        """This model with prompts wrapped in the chat template (True), left bare (False), or as now (None); the
        returned LM shares the model and tokenizer."""
        if chat_template is None or bool(chat_template) == self.use_chat_template:
            return self
        view = copy.copy(self)
        view.use_chat_template = self.chat(chat_template)
        return view

    def format_prompt(self, prompt: str, chat_template: bool | None = None) -> str:
        """The prompt as the model sees it: wrapped in the chat template when one is in use."""
        if not self.chat(chat_template):
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _tokenize(self, text: str, *, add_special_tokens: bool, what: str) -> list[int]:
        try:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        except Exception as exc:  # noqa: BLE001 - tokenizers raise bare TypeErrors for unencodable text
            raise AttrilensError(
                f"The {what} {text[:60]!r} cannot be tokenized ({type(exc).__name__}: {exc}). "
                "Pass valid UTF-8 text without lone surrogates."
            ) from exc

    def encode_prompt(self, prompt: str, chat_template: bool | None = None) -> list[int]:
        """Token ids of a prompt (chat template and special tokens applied as the model expects)."""
        if not prompt:
            raise AttrilensError("The prompt is empty. Pass a non-empty prompt.")
        chat = self.chat(chat_template)
        ids = self._tokenize(self.format_prompt(prompt, chat), add_special_tokens=not chat, what="prompt")
        if len(ids) > self.max_length:
            raise AttrilensError(
                f"The prompt is {len(ids)} tokens, longer than the model's context of {self.max_length}. "
                "Shorten the prompt or context."
            )
        return list(ids)

    def prompt_span(self, prompt: str, chat_template: bool | None = None) -> tuple[list[int], int, int]:
        """The prompt's token ids and the [start, end) tokens that hold the user's text itself (not the chat
        template around it, nor a BOS): what positions given by a user index."""
        chat = self.chat(chat_template)
        ids = self.encode_prompt(prompt, chat)
        text = self.format_prompt(prompt, chat)
        at = text.rfind(prompt)
        enc = self.tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids or at < 0:
            return ids, 0, len(ids)  # a slow tokenizer has no offsets: the whole sequence is the user's
        inside = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < at + len(prompt) and b > at]
        return (ids, inside[0], inside[-1] + 1) if inside else (ids, 0, len(ids))

    def encode_response(self, response: str) -> list[int]:
        """Token ids of a response; raises unless decoding them gives back the same text."""
        if not response:
            raise AttrilensError("The response is empty. Pass a non-empty response or generate one.")
        ids = self._tokenize(response, add_special_tokens=False, what="response")
        back = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        if back != response:
            raise AttrilensError(
                f"The response {response[:60]!r} does not round-trip through the tokenizer (decodes to {back[:60]!r}). "
                "Pass the response as the model's tokenizer writes it (e.g. normalised whitespace)."
            )
        return list(ids)

    def check_length(self, n_tokens: int, what: str = "prompt and response") -> None:
        if n_tokens > self.max_length:
            raise AttrilensError(
                f"The {what} take {n_tokens} tokens, more than the model's context of {self.max_length}. "
                "Shorten the context or the response."
            )

    def pad_batch(self, sequences: Sequence[Sequence[int]], *, padding_side: str = "right", offset: int = 0) -> Batch:
        """Pad token-id lists into a batch with attention mask and position ids (positions start at `offset`)."""
        if padding_side not in ("left", "right"):
            raise AttrilensError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        if not sequences or any(len(s) == 0 for s in sequences):
            raise AttrilensError("Cannot run an empty sequence. Pass at least one token per row.")
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        offsets = []
        for r, s in enumerate(sequences):
            start = width - len(s) if padding_side == "left" else 0
            ids[r, start : start + len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, start : start + len(s)] = 1
            offsets.append(start)
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + offset
        dev = self.device
        return Batch(ids.to(dev), mask.to(dev), pos.to(dev), [len(s) for s in sequences], offsets)
