"""How faithful a pruned attribution is: LL(response | kept context) next to LL(response | full context).

Hierarchical and proxy pruning score sources inside a *kept* context C_K. When C_K no longer supports the
response, the ranking explains a different situation than the one the user asked about, and the result says so.

The rule (`supported`): the kept context must keep at least half of the support the full context gives the response,
support = LL(r | C) − LL(r | ∅) (∅: the prompt with no context), with one nat always allowed:
    LL(r | C) − LL(r | C_K) ≤ max(1, 0.5 · (LL(r | C) − LL(r | ∅))).
Support, not |LL|, is the scale because a shorter context shifts the wording's probability even when the answering
sentence is kept: on SmolLM2, keeping 3 of 26 sentences with the answering one lost 2.5–3.3 nats of a 23-nat
support; pruning it away lost 23–24 (the shipped demo's lost 21.7 of 22). LL(r | ∅) costs one short pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attrilens.errors import AttrilensError

ABSOLUTE_TOLERANCE = 1.0  # nats a kept context may always lose
SUPPORT_KEPT = 0.5  # the share of the full context's support a kept context must keep


def tolerance(ll_full: float, ll_empty: float) -> float:
    """The most log-likelihood (nats) a kept context may lose and still count as supporting the response."""
    return max(ABSOLUTE_TOLERANCE, (1 - SUPPORT_KEPT) * (ll_full - ll_empty))


def supports(ll_full: float, ll_kept: float, ll_empty: float) -> bool:
    """Whether the kept context still supports the response (see the module docstring for the rule)."""
    return ll_full - ll_kept <= tolerance(ll_full, ll_empty)


def _sum(values: Sequence[float] | None) -> float | None:
    return None if values is None else math.fsum(values)


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(x) for x in values]


@dataclass
class Faithfulness:
    """LL(response | full context), LL(response | kept context) and LL(response | no context) under the target,
    and the verdict.

    A log-likelihood is None when the method ran no target pass on that context (one-pass baselines, proxy scores;
    `ll_empty` is only computed for pruned results); `kept_sources` lists the sources the scores were computed
    inside (all when nothing was pruned). Per-token log p (not serialised) let a response sub-span be judged
    without new passes.
    """

    ll_full: float | None
    ll_kept: float | None
    kept_sources: list[int]
    n_sources: int
    ll_empty: float | None = None
    full_tokens: list[float] | None = field(default=None, repr=False, compare=False)
    kept_tokens: list[float] | None = field(default=None, repr=False, compare=False)
    empty_tokens: list[float] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tokens(cls, full: Sequence[float] | None, kept: Sequence[float] | None, kept_sources: Sequence[int],
                    n_sources: int, empty: Sequence[float] | None = None) -> Faithfulness:
        """From per-token log p of the response under the full, kept and empty context (None: not computed)."""
        return cls(_sum(full), _sum(kept), list(kept_sources), int(n_sources), _sum(empty),
                   _floats(full), _floats(kept), _floats(empty))

    @property
    def pruned(self) -> bool:
        """Whether the scores were computed inside a pruned context."""
        return len(self.kept_sources) < self.n_sources

    @property
    def tolerance(self) -> float | None:
        """The nats the kept context may lose (None when a log-likelihood is unknown)."""
        if self.ll_full is None or self.ll_empty is None:
            return None
        return tolerance(self.ll_full, self.ll_empty)

    @property
    def supported(self) -> bool | None:
        """Whether the kept context still supports the response (None when a log-likelihood is unknown)."""
        if not self.pruned:
            return True
        if self.ll_kept is None or self.tolerance is None:
            return None
        return self.ll_full - self.ll_kept <= self.tolerance

    @property
    def warning(self) -> str | None:
        """A one-line warning when the kept context no longer supports the response, else None."""
        if self.supported is not False:
            return None
        lost = self.ll_full - self.ll_kept
        return (f"The kept context ({len(self.kept_sources)} of {self.n_sources} sources) no longer supports the "
                f"response: LL(response | kept) = {self.ll_kept:.2f} vs LL(response | full) = {self.ll_full:.2f} "
                f"nats ({lost:.2f} lost of the {self.ll_full - self.ll_empty:.2f} the context adds; "
                f"{self.tolerance:.2f} allowed), so the scores explain another situation. Keep more sources "
                "(a larger --top-k) or use a method without pruning.")

    def for_tokens(self, tokens: Sequence[int]) -> Faithfulness:
        """The same judgement for a subset of the response tokens (from the stored per-token log p)."""
        def sub(values: list[float] | None) -> list[float] | None:
            return None if values is None else [values[t] for t in tokens]

        pairs = ((self.full_tokens, self.ll_full), (self.kept_tokens, self.ll_kept), (self.empty_tokens, self.ll_empty))
        if any((tokens is None) != (total is None) for tokens, total in pairs):
            raise AttrilensError("This faithfulness record holds no per-token data (e.g. it was loaded from JSON).")
        return Faithfulness.from_tokens(sub(self.full_tokens), sub(self.kept_tokens), self.kept_sources, self.n_sources,
                                        sub(self.empty_tokens))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the log-likelihoods, the kept sources, the verdict, the warning and the tolerance."""
        return {"ll_full": self.ll_full, "ll_kept": self.ll_kept, "ll_empty": self.ll_empty,
                "kept_sources": list(self.kept_sources), "n_sources": self.n_sources, "supported": self.supported,
                "warning": self.warning, "tolerance": self.tolerance}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Faithfulness:
        """Rebuild from `to_dict` (the verdict and warning are recomputed from the numbers)."""
        def num(x: Any) -> float | None:
            return None if x is None else float(x)

        return cls(num(d.get("ll_full")), num(d.get("ll_kept")), [int(i) for i in d["kept_sources"]],
                   int(d["n_sources"]), num(d.get("ll_empty")))
