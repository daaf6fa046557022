"""The rows of `attrilens bench context`: each `Setting` (a label, a method and its options, its proxy or peer,
the row it must equal) and the default grid, read from the context-method registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from attrilens.context import CONTEXT_METHODS, parse_method

PEERS = ("captum", "context-cite")


@dataclass
class Setting:
    """One row of the table: a label, a method name and its options; which proxy it runs (a key of the run's
    proxies) or which peer package computes it; `reference`: the row whose scores it must equal (max |Δ| is
    reported)."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    proxy: str | None = None
    peer: str | None = None
    reference: str | None = None

    @property
    def needs_proxy(self) -> bool:
        """Whether the method runs a proxy model (the row is skipped without one)."""
        return self.peer is None and parse_method(self.method).proxy is not None


# Table labels that differ from the registered name (kept so that tables compare with earlier runs).
LABELS = {"gradient": "gradient-norm"}
NAIVE, CACHED = "loo (naive, exact)", "cached (exact)"
QUICK = {NAIVE, CACHED, "hierarchical K=2", "knockout", "knockout+attention-pruning K=3", "proxy-pruning K=3",
         "hier+proxy-pruning K=3", "contextcite n=16"}


def proxy_settings(proxy: str | None, suffix: str, *, pruning_k: Sequence[int] = (3, 5),
                   hier_k: Sequence[tuple[int, int]] = ((3, 3), (5, 4))) -> list[Setting]:
    """The rows that run one proxy: proxy scores, proxy pruning, hierarchical + proxy pruning."""
    return [
        Setting(f"proxy{suffix}", "proxy", proxy=proxy),
        *(Setting(f"proxy-pruning K={k}{suffix}", "proxy-pruning", {"top_k": k}, proxy=proxy) for k in pruning_k),
        *(Setting(f"hier+proxy-pruning K={k}{suffix}", "hierarchical+proxy-pruning", {"top_k": k, "paragraph_k": p},
                  proxy=proxy) for k, p in hier_k),
    ]


def default_settings(quick: bool = False, proxies: Sequence[str] | None = None, *, peers: bool = False,
                     contextcite_n: Sequence[int] = (8, 16, 32, 64)) -> list[Setting]:
    """The methods and settings compared (naive LOO, the ground truth and cost baseline, comes first).

    The LOO family and ContextCite rows sweep their options; with several `proxies` (labels) each gets its rows,
    labelled "[proxy]", with fewer K values; every registered one-pass estimator (one that uses no scorer:
    attention, gradient, ...) gets one row, in the quick run too. `peers` adds captum's naive LOO (which must
    equal ours) and the context-cite package at the largest ContextCite n (which must equal our row at that n).
    """
    one_pass = [Setting(LABELS.get(name, name), name) for name, cls in CONTEXT_METHODS.items() if not cls.takes_scorer()]
    proxies = list(proxies) if proxies else [None]
    if len(proxies) == 1:
        proxy_rows = proxy_settings(proxies[0], "")
    else:
        proxy_rows = [s for p in proxies for s in proxy_settings(p, f" [{p}]", pruning_k=(3,), hier_k=((3, 3),))]
    s = [
        Setting(NAIVE, "loo"),
        Setting(CACHED, "cached", reference=NAIVE),
        *(Setting(f"hierarchical K={k}", "hierarchical", {"top_k": k}) for k in (2, 4)),
        Setting("knockout", "knockout"),
        Setting("knockout+hierarchical K=2", "knockout+hierarchical", {"top_k": 2}),
        *(Setting(f"attention-pruning K={k}", "attention-pruning", {"top_k": k}) for k in (3, 5)),
        *(Setting(f"knockout+attention-pruning K={k}", "knockout+attention-pruning", {"top_k": k}) for k in (3, 5)),
        *proxy_rows,
        *(Setting(f"contextcite n={n}", "naive+contextcite", {"n_ablations": n}) for n in contextcite_n),
    ]
    if quick:
        s = [x for x in s if x.label in QUICK or (len(proxies) > 1 and x.label.startswith("proxy-pruning K=3"))]
    if peers:
        n = max(int(x.options["n_ablations"]) for x in s if x.method == "naive+contextcite")
        s += [Setting("captum FeatureAblation (naive LOO)", "loo", peer="captum", reference=NAIVE),
              Setting(f"context-cite package n={n}", "contextcite", {"n_ablations": n}, peer="context-cite",
                      reference=f"contextcite n={n}")]
    return s + one_pass
