"""What a curate run re-asks: a questions file ({"id", "prompt"}, optional "truth", "wrong", "chat_template"), or,
without one, every questions.jsonl beside the corpus or in the adapter and the prompts the index was traced with."""

from __future__ import annotations

from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl
from attrilens.workflows.curate.edits import check_unique

QUESTIONS = "questions.jsonl"  # the questions file curate finds beside the corpus or the adapter


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
        if q.get("chat_template") is not None:  # the form to ask it in; else curate's choice (`ask_questions`)
            if not isinstance(q["chat_template"], bool):
                raise AttrilensError(f'Question {qid!r} in {path}: "chat_template" must be true, false or null.')
            row["chat_template"] = q["chat_template"]
        out.append(row)
    check_unique([q["id"] for q in out], f"Questions file {path}")
    return out


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
