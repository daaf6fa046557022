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

The package, one job a module: ``edits`` (the edit and the corpus rows), ``questions`` (what is re-asked),
``source`` (adapter, index, base, recorded settings), ``planning`` (``plan``: every input checked first),
``answers`` (asking and tracing), ``run`` (``curate``, the loop), ``report`` (CurateReport and report.html).
"""

from __future__ import annotations

from attrilens.workflows.curate.answers import MAX_NEW_TOKENS, ask_questions, trace_answers
from attrilens.workflows.curate.answers import ask_questions as _ask  # noqa: F401 (its old name)
from attrilens.workflows.curate.answers import trace_answers as _trace  # noqa: F401 (its old name)
from attrilens.workflows.curate.edits import Edit, apply_edit, read_corpus_rows, read_edit, remove_edit
from attrilens.workflows.curate.planning import INCOMPLETE, CuratePlan, plan
from attrilens.workflows.curate.questions import QUESTIONS, find_questions, read_questions
from attrilens.workflows.curate.report import SCHEMA, CurateReport, render_report, summary_line
from attrilens.workflows.curate.run import curate
from attrilens.workflows.curate.source import RETRAIN_KEYS, check_base, read_training_info, retrain_settings

__all__ = ["INCOMPLETE", "MAX_NEW_TOKENS", "QUESTIONS", "RETRAIN_KEYS", "SCHEMA", "CuratePlan", "CurateReport", "Edit",
           "apply_edit", "ask_questions", "check_base", "curate", "find_questions", "plan", "read_corpus_rows",
           "read_edit", "read_questions", "read_training_info", "remove_edit", "render_report", "retrain_settings",
           "summary_line", "trace_answers"]
