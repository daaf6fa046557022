"""The default prompt of the context lens: AttriBoT's question-answering template around the context."""

from __future__ import annotations

from attrilens.errors import AttrilensError

PROMPT_TEMPLATE = "Answer the question based on the provided context:\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"


def check_template(template: str) -> str:
    """A template with both {context} and {question}, else a one-line error naming the fix."""
    if "{context}" not in template or "{question}" not in template:
        raise AttrilensError("The prompt template must contain {context} and {question}. Fix the template.")
    return template
