"""A curate run's plan: every input checked before a byte is written (the output directory, the source, the
edit, the corpus against the adapter's recorded hash, the questions, the base), or one AttrilensError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attrilens.errors import AttrilensError, check_output_dir
from attrilens.workflows.curate.edits import Edit, apply_edit, read_corpus_rows, read_edit, remove_edit
from attrilens.workflows.curate.questions import find_questions
from attrilens.workflows.curate.source import (
    check_base,
    eval_queries_for,
    find_source,
    read_training_info,
    retrain_settings,
)

INCOMPLETE = ".incomplete"  # present while a run writes `out`; removed after report.json


@dataclass
class CuratePlan:
    """Everything checked before a byte is written: where the adapter, index, base and corpus are, what to do."""

    adapter: Path
    info: dict
    base: Path
    base_spec: str
    corpus_path: Path
    docs: list[dict]
    edited: list[dict]
    edit: Edit
    questions: list[dict]
    index: Path | None
    manifest: dict | None
    eval_queries: list[dict] | None
    settings: dict
    questions_from: list[str] = field(default_factory=list)  # the files (and traced-prompts log) asked from


def plan(index_or_model_dir: Path | str, out: Path | str, *, remove: str | Sequence[str] | None = None,
         edit: Path | str | Edit | None = None, questions: Path | str | None = None, corpus: Path | str | None = None,
         base: str | Path | None = None, eval_queries: Path | str | None = None, text_field: str | None = None,
         id_field: str | None = None) -> CuratePlan:
    """Check every input of a curate run (nothing is written); bad input raises one AttrilensError. `text_field` /
    `id_field` name the corpus's fields (default: those the adapter's training.json records, else "text" / "id";
    the edited corpus is written with "id" and "text")."""
    from attrilens.workflows.lora import documents_sha256

    if (remove is None) == (edit is None):
        raise AttrilensError("Pass exactly one of --remove IDS and --edit FILE.")
    out = check_output_dir(Path(out))
    if (out / INCOMPLETE).exists():
        raise AttrilensError(f"--out {out} holds an unfinished curate run (no report.json). Delete that directory "
                             "and rerun, or pass a new one.")
    if out.is_dir() and any(out.iterdir()):
        raise AttrilensError(f"--out {out} is not empty. Pass a new directory (curate never overwrites a run).")
    adapter, index, manifest = find_source(index_or_model_dir)
    info = read_training_info(adapter)
    the_edit = edit if isinstance(edit, Edit) else read_edit(edit) if edit is not None else remove_edit(remove)
    corpus_path = Path(corpus) if corpus is not None else info["corpus"].get("path")
    if corpus_path is None:
        raise AttrilensError(f"The adapter in {adapter} was trained on documents passed in memory. Pass --corpus "
                             "FILE with those documents.")
    corpus_path = Path(corpus_path)
    if corpus is None and not corpus_path.is_absolute():  # recorded relative to the adapter (shipped assets)
        corpus_path = (adapter / corpus_path).resolve()
    recorded = info["corpus"] if corpus is None else {}  # the fields the recorded corpus was read with
    text_field = text_field or recorded.get("text_field") or "text"
    id_field = id_field or recorded.get("id_field") or "id"
    docs = read_corpus_rows(corpus_path, text_field=text_field, id_field=id_field)
    got = documents_sha256(docs)
    if got != info["corpus"]["sha256"]:
        raise AttrilensError(f"{corpus_path} is not the corpus the adapter in {adapter} was trained on (sha256 "
                             f"{got[:12]} vs recorded {info['corpus']['sha256'][:12]}). Pass --corpus with that corpus.")
    edited = apply_edit(docs, the_edit)
    qs, sources = find_questions(questions, adapter, corpus_path, index, info)  # none: refused before any work
    return CuratePlan(adapter, info, *check_base(base, info, adapter, manifest), corpus_path, docs, edited, the_edit,
                      qs, index, manifest, eval_queries_for(manifest, eval_queries), retrain_settings(info),
                      questions_from=sources)
