"""CLI verb of the curation loop: `attrilens curate` (edit the training corpus → retrain the LoRA → re-ask → report)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.output import JsonFlag
from attrilens.errors import AttrilensError


def _summary(report) -> str:
    """A few lines for the terminal: what changed, the fixed/broken counts, where the files are."""
    t, e, p = report.totals, report.edit, report.paths
    lines = [report.summary, f"edit: removed {len(e['removed'])}, edited {len(e['edited'])} "
             f"({e['n_documents_before']} → {e['n_documents_after']} documents)"]
    if report.retrain_seconds is not None:
        lines.append(f"retrained in {report.retrain_seconds:.1f} s: {p['model']}")
    if t["questions"]:
        if "planted_fixed" in t:
            lines.append(f"questions {t['questions']}: planted facts fixed {t['planted_fixed']} (of "
                         f"{t['planted_before']} answered with the planted value before); correct facts broken "
                         f"{t['correct_broken']} (of {t['correct_before']} correct before)")
        else:
            lines.append(f"questions {t['questions']}: correct {t['correct_before']}, planted {t['planted_before']}")
    else:
        lines.append("no questions: nothing re-asked")
    if p["index"]:
        lines.append(f"new index: {p['index']}")
    lines.append(f"report: {p['report_html']} (and report.json)")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the curation verb to the CLI."""

    @app.command()
    def curate(
        out: Annotated[Path, typer.Option(help="New (or empty) directory for the edited corpus, the retrained "
                                               "adapter, the new index and the before/after report.")],
        index: Annotated[Path | None, typer.Option(help="Index built on a LoRA adapter (its manifest names the "
                                                        "adapter); the answers are traced before and after.")] = None,
        model: Annotated[Path | None, typer.Option(help="LoRA adapter directory (instead of --index: no "
                                                        "tracing).")] = None,
        remove: Annotated[str | None, typer.Option(help="Document ids to remove, comma-separated.")] = None,
        edit: Annotated[Path | None, typer.Option(help='Edit file: JSONL rows {"id", "remove": true} or '
                                                       '{"id", "text"} (the view exports one).')] = None,
        questions: Annotated[Path | None, typer.Option(help='Questions JSONL {"id", "prompt"} with optional '
                                                            '"truth" and "wrong" (planted) values (default: '
                                                            'questions.jsonl beside the corpus or in the adapter '
                                                            'directory, and the prompts the index was traced '
                                                            'with; none of them: refused before retraining).')] = None,
        corpus: Annotated[Path | None, typer.Option(help="The training corpus (default: the one training.json "
                                                         "records; checked against its hash): JSONL, Parquet, a "
                                                         "datasets folder or text files; the edited corpus is "
                                                         "written as JSONL {\"id\", \"text\", ...}.")] = None,
        base: Annotated[str | None, typer.Option(help="Base model the adapter was trained on (a registered name or "
                                                      "a directory; default: the recorded one).")] = None,
        eval_queries: Annotated[Path | None, typer.Option(help="The eval queries the index was built with "
                                                               "(TrackStar's R_eval), when it was.")] = None,
        reindex: Annotated[bool, typer.Option("--reindex/--no-reindex", help="Rebuild the index on the edited "
                                              "corpus and trace the new answers (default on).")] = True,
        top_k: Annotated[int, typer.Option(help="Proponents kept per answer.")] = 10,
        text_field: Annotated[str | None, typer.Option(help="The corpus field holding each document's text "
                                                            "(default: the one the adapter was trained with, "
                                                            "else text).")] = None,
        id_field: Annotated[str | None, typer.Option(help="The corpus field holding each document's id (default: "
                                                          "the one the adapter was trained with, else id).")] = None,
        chat_template: Annotated[bool | None, typer.Option(
            "--chat-template/--no-chat-template",
            help="Ask every question through the model's chat template, or as plain text (default: a question's "
                 "own \"chat_template\" field, else a chat model answers a question or instruction through its "
                 "template and continues other text as plain text, as the adapter was trained); the answers are "
                 "traced as plain text, the index's form.")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Edit the training corpus, retrain the LoRA adapter with the same seed and settings, re-ask the questions
        and write a before/after report (answers and attributions side by side)."""
        from attrilens.workflows.curate import curate as run

        if (index is None) == (model is None):
            raise AttrilensError("Pass exactly one of --index DIR and --model ADAPTER_DIR.")
        if (remove is None) == (edit is None):
            raise AttrilensError("Pass exactly one of --remove IDS and --edit FILE.")
        report = run(index or model, out, remove=remove, edit=edit, questions=questions, corpus=corpus, base=base,
                     eval_queries=eval_queries, reindex=reindex, top_k=top_k, progress=True, text_field=text_field,
                     id_field=id_field, chat_template=chat_template)
        sys.stdout.write(report.to_json() + "\n" if as_json else _summary(report))
