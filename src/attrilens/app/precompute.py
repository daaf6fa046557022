"""Gradient results for the selections a static report offers beside its verbatim spans.

A report opened from disk cannot call the model. For its main view to show "influenced by" (gradient proponents)
beside "stated in" (verbatim documents) when a user clicks a verbatim span, the report carries one training result
for the whole response and one per span, each tagged with the optional "span" field the views match a click
against (character offsets into the response, as the verbatim result gives them).

    docs = span_traces(TrainingIndex.open(idx, lm), verbatim_result)
    Path("report.html").write_text(render_page(docs + [verbatim_result.to_dict()]))
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from attrilens.errors import AttrilensError
from attrilens.training import TrainingIndex
from attrilens.training.verbatim import VerbatimResult


def span_traces(index: TrainingIndex, verbatim: VerbatimResult | dict[str, Any], *, top_k: int = 10,
                progress: bool = True) -> list[dict[str, Any]]:
    """The training documents ("attrilens/training/v1") of the whole response, then of each verbatim span ("span")."""
    doc = verbatim.to_dict() if isinstance(verbatim, VerbatimResult) else verbatim
    if not isinstance(doc, dict) or doc.get("schema") != VerbatimResult.SCHEMA:
        raise AttrilensError(f"span_traces needs a {VerbatimResult.SCHEMA!r} result. Pass what VerbatimIndex.trace "
                             "returned (or its to_dict()).")
    prompt, target = doc["prompt"], doc["target"]
    out = [index.trace(prompt, target=target, top_k=top_k).to_dict()]
    for sp in tqdm(doc["spans"], desc="tracing verbatim spans", unit="span", disable=not progress or not doc["spans"]):
        traced = index.trace(prompt, target=target, top_k=top_k, span=(sp["start"], sp["end"])).to_dict()
        traced["span"] = [sp["start"], sp["end"]]
        out.append(traced)
    return out
