"""The curation loop: edit a LoRA adapter's training corpus, retrain with the same seed and settings, re-ask the
questions and trace the answers before and after, and write the two side by side (`attrilens curate`).

`curate(index_or_model_dir, out, remove=IDS | edit=FILE, questions=FILE)` writes into `out` (new or empty):
    corpus.jsonl   the edited corpus: every other field and the order kept (the original file is never touched)
    edit.jsonl     the edit as applied, one row per document: {"id", "remove": true} or {"id", "text"}
    model/         the adapter retrained by `finetune_lora` with the recorded base, config and seed
    index/         with an index: the same method and options built on the edited corpus with the new model
    report.json    "attrilens/curate/v1": its "summary" first ("re-asked N questions, M changed (from ...)"), then
                   per question the answers (and the form each was asked in), correctness, planted value and top
                   proponents before and after; totals (changed, planted facts fixed, correct facts broken); the
                   edit; retrain seconds
    report.html    the same, before and after side by side (every text escaped, no script)
Without `questions` it re-asks the questions.jsonl beside the corpus or in the adapter directory and the prompts
the index has been traced with (`attrilens.training.traced`); with none of those it refuses, naming --questions.
A question ("...?") is asked through a chat model's template and a text to continue as plain text (the form the
adapter was trained on), unless the question's "chat_template" field or `chat_template` says otherwise; answers are
traced as plain text. Every input is checked before anything is written (bad input: one AttrilensError, `out` not
created). While it runs `out/.incomplete` exists and report.json is written last, so an interrupted run is never
taken for a finished one.
It lives above the lenses (it trains with `demo.lora` and scores with `bench.metrics`).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from attrilens.errors import AttrilensError, check_output_dir
from attrilens.jsonl import iter_jsonl_lines, load_jsonl, write_jsonl
from attrilens.lm import LM, is_adapter_dir
from attrilens.results import Cost, Result

SCHEMA = "attrilens/curate/v1"
INCOMPLETE = ".incomplete"  # present while a run writes `out`; removed after report.json
RETRAIN_KEYS = ("r", "alpha", "target_modules", "epochs", "lr", "batch_size", "seq_len", "seed", "weight_decay")
MAX_NEW_TOKENS = 16


# ---------------------------------------------------------------------- the edit
@dataclass(frozen=True)
class Edit:
    """What to change in a corpus: ids to remove and new texts by id, in the order given."""

    remove: tuple[str, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """The edit as edit.jsonl rows: {"id", "remove": true} or {"id", "text"}."""
        return [{"id": i, "remove": True} for i in self.remove] + [{"id": i, "text": t} for i, t in self.replace.items()]

    def ids(self) -> list[str]:
        """Every document id the edit touches."""
        return [*self.remove, *self.replace]


def _few(ids: Sequence[str], n: int = 5) -> str:
    """At most n ids for a one-line message, with how many more there are."""
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _check_unique(ids: Sequence[str], where: str) -> None:
    """An id named twice in an edit is ambiguous: an error naming the ids."""
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise AttrilensError(f"{where} names document id(s) {_few(sorted(set(twice)))} more than once. "
                             "Give each document one row.")


def remove_edit(ids: str | Sequence[str]) -> Edit:
    """The edit that removes documents: `--remove a,b,c` (a comma-separated string) or a list of ids."""
    parts = ids.split(",") if isinstance(ids, str) else [str(i) for i in ids]
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise AttrilensError("--remove names no document ids. Pass ids separated by commas, e.g. --remove doc-1,doc-7.")
    _check_unique(parts, "--remove")
    return Edit(remove=tuple(parts))


def read_edit(path: Path | str) -> Edit:
    """An edit file: JSONL, one row per document, {"id", "remove": true} or {"id", "text": NEW TEXT}."""
    path = Path(path)
    if not path.is_file():
        raise AttrilensError(f"Edit file {str(path)!r} does not exist. Pass a JSONL file of "
                             '{"id", "remove": true} or {"id", "text"} rows (the view exports one).')
    remove: list[str] = []
    replace: dict[str, str] = {}
    order: list[str] = []
    for lineno, row in iter_jsonl_lines(path):
        where = f"{path}:{lineno}"
        extra = sorted(set(row) - {"id", "remove", "text"})
        if extra:
            raise AttrilensError(f"{where} has unknown field(s) {', '.join(extra)}. An edit row has only \"id\" and "
                                 'either "remove": true or "text".')
        if row.get("id") is None or not str(row["id"]).strip():
            raise AttrilensError(f'{where} has no "id". Name the document to change by its corpus id.')
        doc_id = str(row["id"])
        has_text, removes = "text" in row, row.get("remove", False)
        if removes not in (True, False):
            raise AttrilensError(f'{where} (id {doc_id!r}): "remove" must be true or false, got {removes!r}.')
        if removes and has_text:
            raise AttrilensError(f'{where} (id {doc_id!r}) both removes the document and gives it a new text. '
                                 'Keep one of "remove": true and "text".')
        if removes:
            remove.append(doc_id)
        elif has_text:
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise AttrilensError(f'{where} (id {doc_id!r}) has an empty "text". Give the new text, or write '
                                     '"remove": true to drop the document.')
            replace[doc_id] = row["text"]
        else:
            raise AttrilensError(f'{where} (id {doc_id!r}) changes nothing. Add "remove": true or a new "text".')
        order.append(doc_id)
    if not order:
        raise AttrilensError(f"Edit file {path} has no rows. Give it one JSON line per document to change.")
    _check_unique(order, f"Edit file {path}")
    return Edit(remove=tuple(remove), replace=replace)


def apply_edit(docs: Sequence[dict], edit: Edit) -> list[dict]:
    """The corpus with the edit applied: removed documents dropped, new texts set, every other field and the order
    kept; an id the corpus lacks is an error naming it."""
    known = {str(d["id"]) for d in docs}
    unknown = [i for i in edit.ids() if i not in known]
    if unknown:
        raise AttrilensError(f"The edit names document id(s) not in the corpus: {_few(unknown)}. Use ids from the "
                             "corpus's \"id\" field (the proponents list shows them).")
    gone = set(edit.remove)
    out = [{**d, "text": edit.replace.get(str(d["id"]), d["text"])} for d in docs if str(d["id"]) not in gone]
    if not out:
        raise AttrilensError("The edit removes every document of the corpus. Keep at least one.")
    return out


# ---------------------------------------------------------------------- inputs
def read_corpus_rows(path: Path | str, *, text_field: str = "text", id_field: str = "id") -> list[dict]:
    """A JSONL corpus with every field of each row (read_documents keeps only id and text), checked the same way; a
    row without an id gets its default "line-N" written in, so ids stay put when lines are removed. With other
    `text_field` / `id_field` names, those fields become "text" and "id". Any other format `attrilens.corpus_formats`
    reads (Parquet, a datasets folder, text files) gives rows {"id", "text"} only."""
    from attrilens.corpus_formats import corpus_format, documents_from_rows, iter_row_batches
    from attrilens.training.corpus import read_documents

    path = Path(path)
    if not path.exists():
        raise AttrilensError(f"Corpus file {str(path)!r} does not exist. Pass the JSONL corpus the adapter was "
                             "trained on (--corpus).")
    if corpus_format(path) != "jsonl":
        return read_documents(path, text_field=text_field, id_field=id_field)
    if (text_field, id_field) == ("text", "id"):
        lines = list(iter_jsonl_lines(path))
        docs = documents_from_rows((f"{path}:{n}", n, row) for n, row in lines)
    else:  # the fields checked (a missing one names those there are), then renamed
        docs = documents_from_rows(r for batch in iter_row_batches(path, text_field=text_field, id_field=id_field)
                                   for r in batch)
        lines = [(n, {**{k: v for k, v in row.items() if k not in (text_field, id_field)},
                      "id": row.get(id_field), "text": row[text_field]}) for n, row in iter_jsonl_lines(path)]
    if not docs:
        raise AttrilensError(f"Corpus file {str(path)!r} has no documents. Pass the corpus the adapter was trained on.")
    return [row if row.get("id") is not None else {**row, "id": d["id"]}
            for (_, row), d in zip(lines, docs, strict=True)]


def read_questions(path: Path | str) -> list[dict]:
    """Questions {"id", "prompt"} with optional "truth" and "wrong" strings (demo.misinfo's questions.jsonl)."""
    rows = load_jsonl(path, require=("prompt",))
    out = []
    for k, q in enumerate(rows):
        qid = str(q.get("id", f"q-{k + 1}"))
        if not isinstance(q["prompt"], str) or not q["prompt"].strip():
            raise AttrilensError(f"Question {qid!r} in {path} has an empty prompt. Give every question a prompt.")
        for key in ("truth", "wrong"):
            if q.get(key) is not None and (not isinstance(q[key], str) or not q[key].strip()):
                raise AttrilensError(f'Question {qid!r} in {path}: "{key}" must be a non-empty string or null.')
        row = {"id": qid, "prompt": q["prompt"], "truth": q.get("truth"), "wrong": q.get("wrong")}
        if q.get("chat_template") is not None:  # the form to ask it in; else curate's choice (`_ask`)
            if not isinstance(q["chat_template"], bool):
                raise AttrilensError(f'Question {qid!r} in {path}: "chat_template" must be true, false or null.')
            row["chat_template"] = q["chat_template"]
        out.append(row)
    _check_unique([q["id"] for q in out], f"Questions file {path}")
    return out


QUESTIONS = "questions.jsonl"  # the questions file curate finds beside the corpus or the adapter


def find_questions(questions: Path | str | None, adapter: Path, corpus_path: Path, index: Path | None,
                   info: dict) -> tuple[list[dict], list[str]]:
    """(questions, where they came from) to re-ask: `questions` when given; else every questions.jsonl beside the
    corpus or in the adapter directory (or the file training.json records as "questions") and the prompts the
    index has been traced with (`training.traced`), each prompt once. None at all is an error naming --questions."""
    from attrilens.training.traced import TRACED, read_traced

    if questions is not None:
        return read_questions(questions), [str(questions)]
    found: list[dict] = []
    sources: list[str] = []
    recorded = info.get("questions")
    candidates = [corpus_path / QUESTIONS if corpus_path.is_dir() else corpus_path.with_name(QUESTIONS),
                  adapter / QUESTIONS]
    if isinstance(recorded, str) and recorded.strip():
        candidates.append(Path(recorded) if Path(recorded).is_absolute() else adapter / recorded)
    seen_files: set[Path] = set()
    for path in candidates:
        if not path.is_file() or path.resolve() in seen_files:
            continue
        seen_files.add(path.resolve())
        found += read_questions(path)
        sources.append(str(path))
    if index is not None:
        traced = read_traced(index)
        if traced:
            sources.append(str(index / TRACED))
        for k, t in enumerate(traced, 1):
            found.append({"id": f"traced-{k}", "prompt": t["prompt"], "truth": None, "wrong": None,
                          **({"chat_template": t["generated_with"] == "chat template"} if t["generated_with"] else {})})
    out, prompts, ids = [], set(), set()
    for q in found:  # a prompt asked once; ids kept unique across files
        if q["prompt"] in prompts:
            continue
        prompts.add(q["prompt"])
        qid, n = q["id"], 1
        while qid in ids:
            n += 1
            qid = f"{q['id']}-{n}"
        ids.add(qid)
        out.append({**q, "id": qid})
    if not out:
        where = f"no {QUESTIONS} beside the corpus ({corpus_path.parent if corpus_path.is_file() else corpus_path}) "
        where += f"or in the adapter ({adapter})"
        where += ", and the index has no traced prompts" if index is not None else ""
        raise AttrilensError(f"Nothing to re-ask: {where}. Pass --questions FILE (JSONL {{\"id\", \"prompt\"}} with "
                             "optional \"truth\" and \"wrong\") before the retrain starts.")
    return out, sources


def read_training_info(adapter: Path) -> dict:
    """The adapter's training.json (what finetune_lora recorded): base, config and corpus."""
    path = adapter / "training.json"
    if not path.is_file():
        raise AttrilensError(f"{adapter} has no training.json, so its training settings are unknown. Curate adapters "
                             "trained by attrilens (`attrilens train --lora`, demo.lora.finetune_lora).")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttrilensError(f"Cannot read {path}: {exc}. Retrain the adapter.") from None
    missing = [k for k in RETRAIN_KEYS if k not in (info.get("config") or {})]
    if not info.get("base") or missing or not isinstance(info.get("optimizer"), dict):
        raise AttrilensError(f"{path} lacks the base, optimizer or config fields ({', '.join(missing) or 'base'}) a "
                             "retrain repeats. Retrain the adapter with this attrilens.")
    if not isinstance(info.get("corpus"), dict) or not info["corpus"].get("sha256"):
        raise AttrilensError(f"{path} records no corpus hash (an adapter from an older attrilens), so the corpus "
                             "cannot be checked. Retrain the adapter with this attrilens, then curate it.")
    return info


def _files_digest(directory: Path) -> str:
    """sha256 over a model directory's config.json and weight files: two copies of one model agree."""
    h = hashlib.sha256()
    for p in sorted([directory / "config.json", *directory.glob("*.safetensors")]):
        if p.is_file():
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


def check_base(base: str | Path | None, info: dict, adapter: Path, manifest: dict | None) -> tuple[Path, str]:
    """(directory, spelling to retrain with) of the base model: the recorded one (a registered name or a directory),
    or `base` if it is that model (the same path, or the same config and weights; with an index and the recorded
    base gone, the adapter on it must have the index's model fingerprint, checked when it is loaded)."""
    from attrilens import models

    spec = str(info["base"])
    name = spec if spec in models.MODELS else None
    recorded = models.path(name) if name else Path(spec)
    if base is None:
        if name:
            return models.resolve_model(name), name
        if not recorded.is_dir():
            raise AttrilensError(f"The base model the adapter in {adapter} was trained on ({recorded}) is not on "
                                 "disk. Pass --base with that model's directory or registered name.")
        return recorded, spec
    registered = isinstance(base, str) and base in models.MODELS
    given = models.path(base) if registered else Path(base).expanduser()
    if given.resolve() == recorded.resolve():
        return (models.resolve_model(base) if registered else given), spec
    if not given.is_dir():
        if registered:
            raise AttrilensError(f"The adapter in {adapter} was trained on {spec}, not on {base}. Pass --base {spec} "
                                 "or drop --base.")
        models.resolve_model(str(base))  # raises: neither a registered name nor a directory
    if recorded.is_dir():
        if _files_digest(given) != _files_digest(recorded):
            raise AttrilensError(f"The adapter in {adapter} was trained on the base model {spec}, not on {base} "
                                 f"(different config or weights). Pass --base {spec} or drop --base.")
        return given, str(given)
    if manifest is None:
        raise AttrilensError(f"The recorded base model of {adapter} ({spec}) is not on disk, so --base {base} cannot "
                             "be checked against it. Pass --index (its model fingerprint checks the base) or restore it.")
    return given, str(given)  # checked in `_load_old`: the adapter on this base must have the index's fingerprint


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


def _find_source(index_or_model_dir: Path | str) -> tuple[Path, Path | None, dict | None]:
    """(adapter dir, index dir or None, index manifest or None) from an index directory or an adapter directory."""
    from attrilens.training.store import read_manifest

    path = Path(index_or_model_dir)
    if not path.is_dir():
        raise AttrilensError(f"{str(path)!r} is not a directory. Pass an index directory (--index) or a LoRA adapter "
                             "directory (--model).")
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if manifest.get("method") == "verbatim":
            raise AttrilensError(f"{path} is a verbatim index, which curate does not re-trace. Pass a gradient index "
                                 "or the adapter directory (--model).")
        model_dir = manifest.get("model_dir")
        if not model_dir or not is_adapter_dir(model_dir):
            raise AttrilensError(f"The index in {path} was built on {model_dir or 'a model it does not name'}, not on a "
                                 "LoRA adapter directory on disk; curate retrains LoRA adapters. Pass --model ADAPTER.")
        return Path(model_dir), path, manifest
    if is_adapter_dir(path):
        return path, None, None
    raise AttrilensError(f"{path} is neither an attrilens index (manifest.json) nor a LoRA adapter directory "
                         "(adapter_config.json). Pass one of those.")


def _keep_checkpoints(total: int, steps: list[int]) -> int:
    """The keep_checkpoints that gives the recorded checkpoint steps for `total` steps (finetune_lora's rule)."""
    for k in (2, *range(0, 65)):
        every = max(1, math.ceil(total / (k + 1))) if k else 0
        if [s for s in range(1, total + 1) if every and s % every == 0 and s < total] == steps:
            return k
    raise AttrilensError(f"The recorded checkpoints (steps {steps} of {total}) do not follow finetune_lora's rule. "
                         "Retrain the adapter with this attrilens.")


def retrain_settings(info: dict) -> dict:
    """finetune_lora's keyword arguments that repeat the recorded training: config, seed, checkpoints, step cap
    (training.json's "settings" as given; for an adapter that has none, from its config and checkpoint steps)."""
    given = info.get("settings")
    if isinstance(given, dict) and all(k in given for k in (*RETRAIN_KEYS, "keep_checkpoints", "max_steps")):
        return {k: given[k] for k in (*RETRAIN_KEYS, "keep_checkpoints", "max_steps")}
    cfg = info["config"]
    settings = {k: cfg[k] for k in RETRAIN_KEYS}
    total = int(info["optimizer"]["step"])
    full = cfg["epochs"] * math.ceil(int(info.get("n_documents", 0)) / cfg["batch_size"])
    settings["max_steps"] = total if total < full else None
    settings["keep_checkpoints"] = _keep_checkpoints(total, [int(c["step"]) for c in info.get("checkpoints", [])])
    return settings


def _eval_queries(manifest: dict | None, path: Path | str | None) -> list[dict] | None:
    """The eval queries an index was built with (TrackStar's R_eval), checked against its manifest's fingerprint."""
    from attrilens.training.methods import TDA_METHODS

    n = int(((manifest or {}).get("eval_queries") or {}).get("n", 0))
    if manifest is None or n == 0 or not TDA_METHODS.get(manifest["method"]).uses_eval_queries:
        if path is not None:
            raise AttrilensError("--eval-queries is only for an index built with eval queries. Drop it.")
        return None
    if path is None:
        raise AttrilensError(f"The index was built with {n} eval queries; the new index needs the same ones. Pass "
                             "--eval-queries FILE (the file given to `attrilens index build`).")
    rows = load_jsonl(path, require=("prompt", "target"))
    fp = hashlib.sha256(json.dumps([[q.get("prompt"), q.get("target")] for q in rows]).encode()).hexdigest()
    if fp != manifest["eval_queries"]["fingerprint"]:
        raise AttrilensError(f"{path} are not the eval queries the index was built with. Pass the same file.")
    return rows


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
    adapter, index, manifest = _find_source(index_or_model_dir)
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
                      qs, index, manifest, _eval_queries(manifest, eval_queries), retrain_settings(info),
                      questions_from=sources)


# ---------------------------------------------------------------------- the loop
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


def _says(answer: str, value: str) -> bool:
    """Whether a free-text answer names `value` as a word (an answer given through the chat template)."""
    import re

    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", answer, flags=re.IGNORECASE) is not None


def _ask(lm: LM, questions: list[dict], chat_template: bool | None = None) -> list[dict]:
    """Each question's greedy answer, asked the way the model answers it (the question's own "chat_template", else
    `chat_template`, else `queries.answers_in_chat`: a question through a chat model's template, a text to continue
    as plain text, the form the adapter was trained on), the target its trace scores (plain text), and whether it
    gives the truth and the planted value: a continuation that starts with it, or a chat answer that names it."""
    from attrilens.metrics import greedy_match
    from attrilens.training.queries import answers_in_chat, generate_answer, prompt_form

    plain = lm.with_chat_template(False)  # the trace scores the index's plain-text form
    out = []
    for q in questions:
        chat = answers_in_chat(lm, q["prompt"], q.get("chat_template", chat_template))
        try:
            a = generate_answer(plain, q["prompt"], MAX_NEW_TOKENS, chat)
            answer, target, empty = a.response, a.target, None
        except AttrilensError as exc:  # an empty answer, recorded with the reason
            answer, target, empty = "", None, str(exc)
        correct, planted = (None if not v else _says(answer, v) if chat else greedy_match(answer, f" {v}")
                            for v in (q["truth"], q["wrong"]))
        if chat and correct and planted:  # a chat answer naming both values gives neither
            correct = planted = False
        out.append({"answer": answer, "target": target, "asked_as": prompt_form(chat), "empty": empty,
                    "correct": correct, "planted": planted})
    return out


def _trace(index, questions: list[dict], answers: list[dict], top_k: int) -> list[dict]:
    """Top proponent document ids of each answer (unique, best first), or the reason there are none."""
    out = []
    for q, a in zip(questions, answers, strict=True):
        if not a["answer"].strip():
            out.append({"proponents": None, "error": a.get("empty") or "empty answer"})
            continue
        try:
            result = index.trace(q["prompt"], target=a.get("target") or a["answer"], top_k=top_k)
        except AttrilensError as exc:  # recorded per question in the report, not dropped
            out.append({"proponents": None, "error": str(exc)})
            continue
        out.append({"proponents": list(dict.fromkeys(h.id for h in result.proponents)), "error": None})
    return out


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


def curate(index_or_model_dir: Path | str, out: Path | str, *, remove: str | Sequence[str] | None = None,
           edit: Path | str | Edit | None = None, questions: Path | str | None = None,
           corpus: Path | str | None = None, base: str | Path | None = None, eval_queries: Path | str | None = None,
           retrain: bool = True, reindex: bool = True, top_k: int = 10, progress: bool = True,
           text_field: str | None = None, id_field: str | None = None,
           chat_template: bool | None = None) -> CurateReport:
    """Edit the training corpus of a LoRA adapter (given directly or as the model of an index), retrain it with the
    same base, settings and seed, re-ask the questions with both models, trace the answers through the old index and
    a rebuilt one, and write the before/after report into `out` (module docstring). Without `questions`, the
    questions.jsonl beside the corpus or adapter and the index's traced prompts are re-asked (`find_questions`);
    `chat_template` forces the form they are asked in (default: each the way the model answers it, `_ask`)."""
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
    before = _ask(old_lm, p.questions, chat_template)
    tb = _trace(old_index, p.questions, before, top_k) if old_index is not None else None
    after = ta = None
    retrain_s = index_s = None
    model_dir = index_dir = None
    if retrain:
        _say(progress, f"retraining the LoRA adapter on {p.base} (seed {p.settings['seed']})")
        t0 = time.perf_counter()
        model_dir = finetune_lora(p.base_spec, out / "corpus.jsonl", out / "model", progress=progress, **p.settings)
        retrain_s = round(time.perf_counter() - t0, 3)
        new_lm = LM.from_pretrained(model_dir, base=p.base).with_chat_template(False)
        after = _ask(new_lm, p.questions, chat_template)
        if old_index is not None and reindex:
            _say(progress, f"rebuilding the {p.manifest['method']} index on the edited corpus")
            t0 = time.perf_counter()
            index_dir = out / "index"
            new_index = _rebuild_index(p, new_lm, out / "corpus.jsonl", index_dir, model_dir, progress)
            index_s = round(time.perf_counter() - t0, 3)
            ta = _trace(new_index, p.questions, after, top_k)
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


def summary_line(totals: dict, sources: Sequence[str] = ()) -> str:
    """The report's first line: how many questions were re-asked and how many answers changed (and from where)."""
    n = int(totals.get("questions", 0))
    what = f"{n} question{'s' if n != 1 else ''}"
    line = (f"re-asked {what}, {totals['changed']} changed" if "changed" in totals
            else f"asked {what} (no retrain: nothing re-asked)")
    return line + (f" (from {', '.join(sources)})" if sources else "")


def _write_text(path: Path, text: str) -> None:
    """Write a file through a temporary one, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the result
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
