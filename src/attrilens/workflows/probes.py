"""What a training run is meant to learn, measured while it trains: greedy recall of facts or of documents' own words.

- ``FactProbe``: ``{"prompt", "target"}`` rows (a facts file), teacher-forced in one batched forward pass;
- ``continuation_rows``: the same rows made from the corpus itself when no facts are given — each document's own
  continuation: its last word from its beginning, and the last word of each of its last few sentences from the
  sentence's own start — so a run without a facts file still measures whether it learnt what it was given, the
  way it will be prompted (a statement alone, not inside the document that stated it).

Rows sharing one prompt (two documents that begin alike and end differently, such as a planted document and the
true one) form one *group*: the group is recalled when the greedy continuation is any of its targets, since no model
can continue one prompt two ways. Continuations are counted by document (``by="document"``): a document is
recalled when all of its groups are, so that the sentences a corpus repeats (learnt first) do not hide the ones
it states once.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from attrilens.errors import AttrilensError

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n")
_TRAILING = ".,;:!?\"')]}»”’"
MAX_POINTS_PER_DOCUMENT = 4
CONTINUATION_DESCRIPTION = ("no facts file: the fraction of documents whose own continuations are all recalled "
                            "(greedy exact match of the last word of each of its last <= 4 sentences from the "
                            "sentence's start, and of its last word from its beginning; rows with one prompt are "
                            "recalled if any of their targets is); n_facts counts documents; the curve on a fixed "
                            "seeded sample of documents every eval_every steps, `final` on all of them at the end")


def continuation_rows(ids: Sequence[str], texts: Sequence[str],
                      max_points: int = MAX_POINTS_PER_DOCUMENT) -> list[dict]:
    """Probe rows of each document's own continuation: its last word from the document's beginning, and the last
    word of each of its last ``max_points`` sentences from that sentence's own start (a statement is learnt when it
    is recalled without the document around it, as a user would prompt it). Targets carry the space before the word
    and no trailing punctuation; a document of one word gives none."""
    rows = []
    for doc_id, text in zip(ids, texts, strict=True):
        ends = sorted({m.end() for m in _SENTENCE_END.finditer(text)} | {len(text.rstrip())})
        points: list[tuple[str, str]] = []
        start = 0
        spans = []
        for end in ends:
            if text[start:end].strip():
                spans.append((start, end))
            start = end
        for k, (s0, end) in enumerate(spans):
            if k >= len(spans) - max_points:
                point = _last_word(text[s0:end].lstrip())
                if point and point not in points:
                    points.append(point)
        whole = _last_word(text)
        if whole and whole not in points:
            points.append(whole)
        for k, (prompt, target) in enumerate(points):
            rows.append({"id": f"{doc_id}@{k}", "doc": doc_id, "prompt": prompt, "target": target})
    return rows


def _last_word(text: str) -> tuple[str, str] | None:
    """(the text up to its last word, that word with the space before it, no trailing punctuation), or None."""
    head = text.rstrip().rstrip(_TRAILING)
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    if cut <= 0 or not head[cut + 1 :].strip():
        return None
    prompt = head[:cut].rstrip()
    return (prompt, head[len(prompt) :]) if prompt else None


class FactProbe:
    """Greedy recall of a model on ``{"prompt", "target"}`` rows, teacher-forced: a row is recalled when the argmax
    after its prompt spells the target's tokens and the next one does not continue the word (the same verdict as
    `greedy_match` on a greedy generation, in one batched forward pass instead of a decoding loop). Rows with the
    same prompt form one group (recalled when any of its targets is). What ``len``, the sample and the recall count
    are *units*: each group (``by="prompt"``, facts) or each document (``by="document"``: rows carry their "doc"; a
    document is recalled when every group of its rows is — it is learnt when all of it is, not its easiest
    sentence).

    ``skip_long``: drop rows longer than ``max_len`` tokens (a corpus' own documents) instead of refusing them."""

    def __init__(self, rows: list[dict], tok, max_len: int, batch_size: int = 64, skip_long: bool = False,
                 by: str = "prompt"):
        if by not in ("prompt", "document"):
            raise AttrilensError(f"A probe counts by prompt or by document, not {by!r}.")
        self.tok, self.batch_size = tok, batch_size
        self.pairs: list[tuple[list[int], list[int]]] = []
        self.groups: list[list[int]] = []
        by_prompt: dict[str, int] = {}
        unit_of: dict[str, int] = {}
        self.units: list[list[int]] = []  # each unit's groups
        for r in rows:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            t = tok(r["target"], add_special_tokens=False)["input_ids"]
            if not p or not t or len(p) + len(t) > max_len:
                if skip_long and p and t:
                    continue
                raise AttrilensError(f"Fact {r.get('id', r['prompt'])!r} has an empty prompt or target, or is longer "
                                     f"than seq_len={max_len} tokens. Fix or drop it.")
            g = by_prompt.setdefault(r["prompt"], len(self.groups))
            if g == len(self.groups):
                self.groups.append([])
            self.groups[g].append(len(self.pairs))
            self.pairs.append((p, t))
            key = r["prompt"] if by == "prompt" else str(r["doc"])
            u = unit_of.setdefault(key, len(self.units))
            if u == len(self.units):
                self.units.append([])
            if g not in self.units[u]:
                self.units[u].append(g)

    def __len__(self) -> int:
        return len(self.units)

    @torch.no_grad()
    def _row_hits(self, model, idx: list[int]) -> dict[int, bool]:
        from attrilens.metrics import greedy_match

        idx = sorted(idx, key=lambda i: len(self.pairs[i][0]) + len(self.pairs[i][1]))  # little padding
        training = model.training
        model.eval()
        found: dict[int, bool] = {}
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        device = next(model.parameters()).device
        for b in range(0, len(idx), self.batch_size):
            chunk = idx[b : b + self.batch_size]
            seqs = [self.pairs[i][0] + self.pairs[i][1] for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            pred = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
            for r, i in enumerate(chunk):
                p, t = self.pairs[i]
                spelled = pred[r, len(p) - 1 : len(p) + len(t) - 1].tolist() == t
                nxt = self.tok.decode([int(pred[r, len(p) + len(t) - 1])], skip_special_tokens=True)
                found[i] = spelled and greedy_match("x" + nxt, "x")
        model.train(training)
        return found

    def _groups_of(self, subset: list[int] | None) -> list[int]:
        units = range(len(self.units)) if subset is None else subset
        return sorted({g for u in units for g in self.units[u]})

    def hits(self, model, subset: list[int] | None = None) -> list[bool]:
        """Whether each unit (of ``subset``, default all) is recalled; the model's training flag is kept."""
        units = list(range(len(self.units))) if subset is None else subset
        found = self._row_hits(model, [i for g in self._groups_of(units) for i in self.groups[g]])
        group_hit = {g: any(found[i] for i in self.groups[g]) for g in self._groups_of(units)}
        return [all(group_hit[g] for g in self.units[u]) for u in units]

    def recall(self, model, subset: list[int] | None = None) -> float:
        """Fraction of the units (of ``subset``) recalled."""
        h = self.hits(model, subset)
        return sum(h) / max(1, len(h))

    def sample_tokens(self, subset: list[int]) -> int:
        """Tokens one measurement of ``subset`` runs through the model."""
        return sum(len(self.pairs[i][0]) + len(self.pairs[i][1]) for g in self._groups_of(subset)
                   for i in self.groups[g])


def make_probe(tok, ids: Sequence[str], texts: Sequence[str], facts: Path | str | None, max_len: int,
               eval_facts: int, sample_key: str) -> tuple[FactProbe, list[int]]:
    """The recall probe of a training run — the facts file's, or without one the documents' own continuations
    (counted by document) — and the fixed sample of at most ``eval_facts`` units measured during training, drawn
    from ``sample_key`` (the trainer's seed)."""
    from attrilens.jsonl import load_jsonl

    if facts is not None:
        probe = FactProbe(load_jsonl(Path(facts), require=("prompt", "target")), tok, max_len)
    else:
        probe = FactProbe(continuation_rows(ids, texts), tok, max_len, skip_long=True, by="document")
    sample = list(range(len(probe)))
    if len(sample) > eval_facts:
        sample = sorted(random.Random(sample_key).sample(sample, eval_facts))
    return probe, sample


def default_eval_every(probe: FactProbe, sample: list[int], epoch_steps: int, epoch_tokens: int) -> int:
    """Steps between recall measurements: once an epoch (at most 50 steps), but rarer when the measurement would
    cost over ~5 % of the training (its forward pass over the sample ~ 1/3 of a training step's work per token)."""
    step_tokens = epoch_tokens / max(1, epoch_steps)
    return max(1, min(50, epoch_steps), math.ceil(probe.sample_tokens(sample) / (3 * 0.05 * step_tokens)))
