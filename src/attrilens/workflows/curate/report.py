"""The curate result: CurateReport ("attrilens/curate/v1": the edit, the retrain settings, and per question the
answers and proponents before and after), its summary line, and report.html (plain HTML, every text escaped)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attrilens.errors import AttrilensError
from attrilens.results import Cost, Result

SCHEMA = "attrilens/curate/v1"


def summary_line(totals: dict, sources: Sequence[str] = ()) -> str:
    """The report's first line: how many questions were re-asked and how many answers changed (and from where)."""
    n = int(totals.get("questions", 0))
    what = f"{n} question{'s' if n != 1 else ''}"
    line = (f"re-asked {what}, {totals['changed']} changed" if "changed" in totals
            else f"asked {what} (no retrain: nothing re-asked)")
    return line + (f" (from {', '.join(sources)})" if sources else "")


@dataclass
class CurateReport(Result):
    """A curate run: the edit, the retrain settings, and per question the answers and proponents before/after."""

    SCHEMA: ClassVar[str] = SCHEMA

    source: dict[str, Any]
    edit: dict[str, Any]
    questions: list[dict[str, Any]]
    totals: dict[str, Any]
    paths: dict[str, Any]
    settings: dict[str, Any]
    retrain_seconds: float | None = None
    index_seconds: float | None = None
    cost: Cost = field(default_factory=Cost)
    summary: str = ""  # the first line: "re-asked N questions, M changed (from ...)"; from the totals when not given

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = summary_line(self.totals)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "summary": self.summary, "source": self.source, "edit": self.edit,
                "totals": self.totals,
                "questions": self.questions, "paths": self.paths, "settings": self.settings,
                "retrain_seconds": self.retrain_seconds, "index_seconds": self.index_seconds,
                "cost": self.cost.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurateReport:
        try:
            return cls(d["source"], d["edit"], d["questions"], d["totals"], d["paths"], d["settings"],
                       d.get("retrain_seconds"), d.get("index_seconds"), Cost.from_dict(d.get("cost", {})),
                       str(d.get("summary") or ""))
        except KeyError as exc:
            raise AttrilensError(f"The curate report has no {exc.args[0]!r} field. Pass what to_json() wrote.") from None

    def to_frame(self):
        """One row per question: answers, correctness and planted value before and after."""
        import pandas as pd

        cols = ["id", "prompt", "truth", "wrong", "answer_before", "answer_after", "correct_before", "correct_after",
                "planted_before", "planted_after", "proponents_before", "proponents_after"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in self.questions], columns=cols)

    def to_html(self, title: str | None = None) -> str:
        """A self-contained page: the edit, the totals and every question before and after side by side."""
        return render_report(self.to_dict(), title or "attrilens curate: before and after")


# ---------------------------------------------------------------------- report.html
_CSS = """body{font:14px/1.5 system-ui,sans-serif;color:#1d2329;max-width:1180px;margin:0 auto;padding:0 16px 32px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #d9dee3;padding:4px 8px;
text-align:left;vertical-align:top}.ok{color:#276749}.bad{color:#9b2c2c}.muted{color:#5f6b76}
.text{white-space:pre-wrap;overflow-wrap:anywhere}.edited{text-decoration:line-through;color:#9b2c2c}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}"""


def _e(value: Any) -> str:
    """Any value as escaped HTML text (None as a dash)."""
    return "—" if value is None else html.escape(str(value))


def _mark(value: bool | None) -> str:
    """✓ / ✗ / – for a yes/no/unknown."""
    return "–" if value is None else '<span class="ok">✓</span>' if value else '<span class="bad">✗</span>'


def _ids(ids: list[str] | None, touched: set[str], error: str | None) -> str:
    """A proponent id list; ids the edit touched struck through."""
    if ids is None:
        return f'<span class="muted">{_e(error or "not traced")}</span>'
    return "<br>".join(f'<span class="edited">{_e(i)}</span>' if i in touched else _e(i) for i in ids) or "—"


def render_report(d: dict[str, Any], title: str) -> str:
    """report.html from a report dict: plain HTML, every string escaped, no script."""
    touched = set(d["edit"]["removed"]) | set(d["edit"]["edited"])
    totals = "".join(f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(v)}</td></tr>" for k, v in d["totals"].items())
    rows = []
    for q in d["questions"]:
        rows.append(
            f"<tr><td class='text'>{_e(q['id'])}</td><td class='text'>{_e(q['prompt'])}"
            f"{'<br><span class=muted>asked as ' + _e(q['asked_as']) + '</span>' if q.get('asked_as') else ''}</td>"
            f"<td>{_e(q['truth'])}<br><span class='muted'>planted: {_e(q['wrong'])}</span></td>"
            f"<td class='text'>{_e(q['answer_before'])}<br>correct {_mark(q['correct_before'])} · planted "
            f"{_mark(q['planted_before'])}</td>"
            f"<td class='text'>{_e(q['answer_after'])}<br>correct {_mark(q['correct_after'])} · planted "
            f"{_mark(q['planted_after'])}</td>"
            f"<td>{_ids(q['proponents_before'], touched, q.get('trace_error_before'))}</td>"
            f"<td>{_ids(q['proponents_after'], touched, q.get('trace_error_after'))}</td></tr>")
    edit = d["edit"]
    settings = ", ".join(f"{k}={v}" for k, v in d["settings"].items())
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n"
        f"<p><strong>{_e(d.get('summary') or summary_line(d['totals']))}</strong></p>\n"
        f"<p class='muted'>adapter {_e(d['source']['adapter'])} · index {_e(d['source']['index'])} · base "
        f"{_e(d['source']['base'])}<br>corpus {_e(d['source']['corpus'])} → {_e(d['paths']['corpus'])}<br>"
        f"retrained into {_e(d['paths']['model'])} in {_e(d['retrain_seconds'])} s ({_e(settings)})</p>\n"
        f"<div class='two'><div><h2>Edit</h2><p>removed {len(edit['removed'])}: "
        f"<span class='text'>{_e(', '.join(edit['removed']) or '—')}</span><br>edited {len(edit['edited'])}: "
        f"<span class='text'>{_e(', '.join(edit['edited']) or '—')}</span><br>documents "
        f"{_e(edit['n_documents_before'])} → {_e(edit['n_documents_after'])}</p></div>"
        f"<div><h2>Totals</h2><table>{totals}</table></div></div>\n"
        "<h2>Questions, before and after</h2>\n<table><thead><tr><th>id</th><th>prompt</th><th>truth</th>"
        "<th>answer before</th><th>answer after</th><th>top proponents before (edited struck)</th>"
        f"<th>top proponents after</th></tr></thead><tbody>{''.join(rows)}</tbody></table>\n"
        + ("" if rows else "<p class='muted'>No questions were asked (pass --questions FILE).</p>\n")
        + "</body></html>\n")
