"""What a model answers: each question's greedy answer, asked the way the model answers it, checked against the
truth and the planted value, and the top proponents an index traces for it."""

from __future__ import annotations

from attrilens.errors import AttrilensError
from attrilens.lm import LM

MAX_NEW_TOKENS = 16


def _says(answer: str, value: str) -> bool:
    """Whether a free-text answer names `value` as a word (an answer given through the chat template)."""
    import re

    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", answer, flags=re.IGNORECASE) is not None


def ask_questions(lm: LM, questions: list[dict], chat_template: bool | None = None) -> list[dict]:
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


def trace_answers(index, questions: list[dict], answers: list[dict], top_k: int) -> list[dict]:
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
