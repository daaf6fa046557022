"""`curate`: one curation run — plan it, write the edited corpus, ask before, retrain and rebuild the index, ask
and trace after, and write the before/after report (report.json last, so an interrupted run is never finished)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import write_jsonl
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.workflows.curate.answers import ask_questions, trace_answers
from attrilens.workflows.curate.edits import Edit
from attrilens.workflows.curate.planning import INCOMPLETE, CuratePlan, plan
from attrilens.workflows.curate.report import CurateReport, summary_line


def curate(index_or_model_dir: Path | str, out: Path | str, *, remove: str | Sequence[str] | None = None,
           edit: Path | str | Edit | None = None, questions: Path | str | None = None,
           corpus: Path | str | None = None, base: str | Path | None = None, eval_queries: Path | str | None = None,
           retrain: bool = True, reindex: bool = True, top_k: int = 10, progress: bool = True,
           text_field: str | None = None, id_field: str | None = None,
           chat_template: bool | None = None) -> CurateReport:
    """Edit the training corpus of a LoRA adapter (given directly or as the model of an index), retrain it with the
    same base, settings and seed, re-ask the questions with both models, trace the answers through the old index and
    a rebuilt one, and write the before/after report into `out` (`attrilens.workflows.curate`). Without
    `questions`, the questions.jsonl beside the corpus or adapter and the index's traced prompts are re-asked
    (`find_questions`); `chat_template` forces the form they are asked in (default: each the way the model answers
    it, `ask_questions`)."""
    from attrilens.workflows.lora import finetune_lora

    if top_k < 1:
        raise AttrilensError(f"--top-k must be at least 1, got {top_k}.")
    t_start = time.perf_counter()
    p = plan(index_or_model_dir, out, remove=remove, edit=edit, questions=questions, corpus=corpus, base=base,
             eval_queries=eval_queries, text_field=text_field, id_field=id_field)
    old_lm, old_index = _load_old(p)  # a base the adapter does not fit fails here, before anything is written
    if chat_template:
        old_lm.chat(True)  # a model without a chat template: refused here, before anything is written
    out = Path(out).resolve()  # absolute: training.json and the new index's manifest record these paths
    out.mkdir(parents=True, exist_ok=True)
    marker = out / INCOMPLETE
    marker.write_text("a curate run is writing this directory; without report.json it did not finish\n")
    write_jsonl(out / "corpus.jsonl", p.edited)
    write_jsonl(out / "edit.jsonl", p.edit.rows())
    _say(progress, f"edited corpus: {len(p.docs)} → {len(p.edited)} documents ({out / 'corpus.jsonl'})")
    _say(progress, f"asking {len(p.questions)} questions (from {', '.join(p.questions_from)})")
    before = ask_questions(old_lm, p.questions, chat_template)
    tb = trace_answers(old_index, p.questions, before, top_k) if old_index is not None else None
    after = ta = None
    retrain_s = index_s = None
    model_dir = index_dir = None
    if retrain:
        _say(progress, f"retraining the LoRA adapter on {p.base} (seed {p.settings['seed']})")
        t0 = time.perf_counter()
        model_dir = finetune_lora(p.base_spec, out / "corpus.jsonl", out / "model", progress=progress, **p.settings)
        retrain_s = round(time.perf_counter() - t0, 3)
        new_lm = LM.from_pretrained(model_dir, base=p.base).with_chat_template(False)
        after = ask_questions(new_lm, p.questions, chat_template)
        if old_index is not None and reindex:
            _say(progress, f"rebuilding the {p.manifest['method']} index on the edited corpus")
            t0 = time.perf_counter()
            index_dir = out / "index"
            new_index = _rebuild_index(p, new_lm, out / "corpus.jsonl", index_dir, model_dir, progress)
            index_s = round(time.perf_counter() - t0, 3)
            ta = trace_answers(new_index, p.questions, after, top_k)
    rows = _rows(p, before, after, tb, ta)
    totals = _totals(rows, retrain)
    touched = {str(d["id"]): d["text"] for d in p.docs}
    report = CurateReport(
        source={"adapter": str(p.adapter), "index": str(p.index) if p.index else None, "base": p.base_spec,
                "corpus": str(p.corpus_path), "method": p.manifest["method"] if p.manifest else None,
                "questions": list(p.questions_from)},
        edit={"removed": list(p.edit.remove), "edited": list(p.edit.replace),
              "unchanged": [i for i, t in p.edit.replace.items() if touched[i] == t],
              "n_documents_before": len(p.docs), "n_documents_after": len(p.edited)},
        questions=rows, totals=totals,
        paths={"corpus": str(out / "corpus.jsonl"), "edit": str(out / "edit.jsonl"),
               "model": str(model_dir) if model_dir else None, "index": str(index_dir) if index_dir else None,
               "report_json": str(out / "report.json"), "report_html": str(out / "report.html")},
        settings=dict(p.settings), retrain_seconds=retrain_s, index_seconds=index_s,
        cost=Cost(seconds=round(time.perf_counter() - t_start, 3)),
        summary=summary_line(totals, p.questions_from))
    _write_text(out / "report.html", report.to_html())
    _write_text(out / "report.json", report.to_json(indent=1) + "\n")
    marker.unlink()
    _say(progress, f"report: {out / 'report.html'}")
    return report


def _say(progress: bool, message: str) -> None:
    """A progress line on stderr."""
    if progress:
        print(f"curate: {message}", file=sys.stderr, flush=True)


def _load_old(p: CuratePlan):
    """The adapter as trained (completion prompts: no chat template) and its index, opened against the corpus."""
    from attrilens.training.index import TrainingIndex

    lm = LM.from_pretrained(p.adapter, base=p.base).with_chat_template(False)
    if p.index is None:
        return lm, None
    if lm.fingerprint() != p.manifest["model"]["fingerprint"]:
        raise AttrilensError(f"The adapter in {p.adapter} on the base {p.base} is not the model the index in "
                             f"{p.index} was built with. Pass --base with the model the adapter was trained on.")
    return lm, TrainingIndex.open(p.index, lm, corpus=[{"id": str(d["id"]), "text": d["text"]} for d in p.docs])


def _rebuild_index(p: CuratePlan, lm: LM, corpus: Path, out: Path, model_dir: Path, progress: bool):
    """The same method and options as the old index, on the edited corpus with the retrained model."""
    from attrilens.training.index import TrainingIndex, build_index

    m = p.manifest
    options = dict(m["options"])
    proj = {"proj_dim": options.pop("proj_dim")} if "proj_dim" in options else {}
    build_index(lm.with_chat_template(bool(m.get("chat_template"))), corpus, out, method=m["method"],
                model_dir=model_dir, eval_queries=p.eval_queries, shard_size=m.get("shard_size"),
                dtype=m.get("dtype") or "float16", progress=progress, **proj, **options)
    return TrainingIndex.open(out, lm, model_dir=model_dir)


def _rows(p: CuratePlan, before: list[dict], after: list[dict] | None, tb: list[dict] | None,
          ta: list[dict] | None) -> list[dict]:
    """One report row per question: answers, correctness, planted value and proponents before and after."""
    touched = set(p.edit.ids())
    rows = []
    for k, q in enumerate(p.questions):
        row = {**q, "asked_as": before[k]["asked_as"],
               "answer_before": before[k]["answer"], "answer_after": after[k]["answer"] if after else None,
               "correct_before": before[k]["correct"], "correct_after": after[k]["correct"] if after else None,
               "planted_before": before[k]["planted"], "planted_after": after[k]["planted"] if after else None,
               "proponents_before": tb[k]["proponents"] if tb else None,
               "proponents_after": ta[k]["proponents"] if ta else None}
        row["edited_proponents"] = [i for i in row["proponents_before"] or [] if i in touched] if tb else None
        errors = {f"trace_error_{w}": t[k]["error"] for w, t in (("before", tb), ("after", ta)) if t and t[k]["error"]}
        errors.update({f"empty_{w}": a[k]["empty"] for w, a in (("before", before), ("after", after))
                       if a and a[k]["empty"]})
        rows.append({**row, **errors})
    return rows


def _totals(rows: list[dict], retrained: bool) -> dict:
    """Counts: correct and planted answers before/after, planted facts fixed, correct facts broken."""
    def count(key: str) -> int:
        return sum(1 for r in rows if r[key])

    t = {"questions": len(rows), "planted_questions": sum(1 for r in rows if r["wrong"]),
         "correct_before": count("correct_before"), "planted_before": count("planted_before")}
    if retrained:
        t.update(changed=sum(1 for r in rows if r["answer_after"] != r["answer_before"]),
                 correct_after=count("correct_after"), planted_after=count("planted_after"),
                 planted_fixed=sum(1 for r in rows if r["planted_before"] and not r["planted_after"]),
                 planted_fixed_to_truth=sum(1 for r in rows if r["planted_before"] and r["correct_after"]),
                 correct_broken=sum(1 for r in rows if r["correct_before"] and not r["correct_after"]))
    return t


def _write_text(path: Path, text: str) -> None:
    """Write a file through a temporary one, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
