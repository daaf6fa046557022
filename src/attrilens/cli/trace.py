"""CLI verb that queries training-data indexes: `attrilens trace` (one index, several runs' indexes, or a verbatim
index; one --prompt or a --batch file of queries)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.index import VERBATIM
from attrilens.cli.loading import MODEL_HELP, load_lm
from attrilens.cli.options import given_flags
from attrilens.cli.output import JsonFlag, emit
from attrilens.errors import AttrilensError
from attrilens.models import resolve_model


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AttrilensError(f"{what} must be comma-separated integers like 0,2,3, got {text!r}.") from None


# trace's --chat-template: the same option names as every verb that loads a model; here it picks one prompt form for
# both writing a --generate response and scoring it
TraceChatTemplate = Annotated[bool | None, typer.Option(
    "--chat-template/--no-chat-template",
    help="Prompt the model through its chat template, or as plain text, both to write the --generate response and "
         "to score it (default: a chat model answers a question or instruction through its chat template and "
         "continues other text as plain text; the response is scored in the form the index was built with).")]


def _trace_queries(ctx: typer.Context, prompt: str | None, target: str | None, generate: bool, batch: Path | None,
                   prompt_field: str, target_field: str, id_field: str):
    """The queries of one `trace` call: the one --prompt (with --target or --generate), or every row of --batch."""
    from attrilens.training.query_files import QueryRow, iter_query_rows

    if (prompt is None) == (batch is None):
        raise AttrilensError("Pass exactly one of --prompt P or --batch FILE.")
    if batch is None:
        fields = [f for f in ("--prompt-field", "--target-field", "--id-field")
                  if f in given_flags(ctx, set())]
        if fields:
            raise AttrilensError(f"{', '.join(fields)} name the fields of a --batch file. Drop them, or pass --batch.")
        if generate == (target is not None):
            raise AttrilensError("Pass exactly one of --target T or --generate.")
        return iter([QueryRow("prompt", prompt, target, "--prompt")])
    if target is not None:
        raise AttrilensError("--target is one query's response; with --batch each row holds its own (--target-field "
                             f"{target_field!r}). Drop --target.")
    options = {"prompt_field": prompt_field, "target_field": target_field, "id_field": id_field, "generate": generate}
    for _ in iter_query_rows(batch, **options):  # every row checked before any model loads (a read of the file)
        pass
    return iter_query_rows(batch, **options)


def _emit_traces(queries, one, as_json: bool) -> None:
    """Trace each query with `one` and print it: one query as before; a batch as one JSON result a line (with
    its "query_id") under --json, else each table under its id and prompt, as each is traced."""
    import json

    from tqdm import tqdm

    first = next(queries)
    if first.where == "--prompt":
        return _emit_trace(one(first), as_json)
    bar = tqdm(desc="trace", unit="query", file=sys.stderr, mininterval=2.0, dynamic_ncols=True)
    for q in itertools.chain([first], queries):
        result = one(q)
        if as_json:
            sys.stdout.write(json.dumps({"query_id": q.id, **result.to_dict()}, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            print(f"## {q.id}: {q.prompt!r}")
            _emit_trace(result, False)
        bar.update(1)
    bar.close()


def _trace_ensemble(ctx: typer.Context, paths: list[Path], generate: bool, max_new_tokens: int, tokens: str | None,
                    top_k: int, aggregate: str, chat_template: bool | None):
    """`trace` over several runs' indexes: each scores with its own run's model, ranked by the aggregate; returns
    the function that traces one query."""
    from attrilens.training.ensemble import IndexEnsemble

    bad = given_flags(ctx, {"index", "prompt", "target", "generate", "max_new_tokens", "tokens", "top_k", "aggregate",
                       "chat_template", "as_json", "batch", "prompt_field", "target_field", "id_field"})
    if bad:
        raise AttrilensError(f"{', '.join(bad)} apply to one index, not to several --index. Drop them.")
    ensemble = IndexEnsemble.open(paths, aggregate, chat_template=chat_template)

    def one(q):
        answer = ensemble.indexes[0].answer(q.prompt, max_new_tokens, chat_template) if q.target is None else None
        target = answer.target if answer is not None else q.target  # the first run's model answers; all attribute it
        result = ensemble.trace(q.prompt, target, _parse_ints(tokens, "--tokens"), top_k)
        if answer is not None:
            result.generated_with, result.scored_as = answer.generated_with, answer.scored_as
        return result

    return one


def _emit_trace(result, as_json: bool) -> None:
    """A trace result as `emit` prints it, with a generated response's forms on the line before the table."""
    line = result.forms_line() if hasattr(result, "forms_line") else None
    if line and not as_json:
        print(f"{line}: {result.target!r}")
    emit(result, as_json)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `trace` to the CLI."""

    @app.command()
    def trace(
        ctx: typer.Context,
        index: Annotated[list[Path], typer.Option(help="Index directory written by `attrilens index build`; repeat it "
                                                       "with one index per training run (e.g. per data order) of "
                                                       "one corpus to rank by their aggregated scores.")],
        prompt: Annotated[str | None, typer.Option(help="The prompt (or --batch FILE).")] = None,
        target: Annotated[str | None, typer.Option(help="The response to attribute (teacher-forced).")] = None,
        generate: Annotated[bool, typer.Option(help="Attribute the model's own greedy response instead (with "
                                                    "--batch: for the rows without a target).")] = False,
        batch: Annotated[Path | None, typer.Option(help="Trace every query of a file, one a row: JSONL, Parquet, a "
                                                        "datasets folder or text files; --json prints one result "
                                                        "a line.")] = None,
        prompt_field: Annotated[str, typer.Option(help="--batch: the field holding the prompt.")] = "prompt",
        target_field: Annotated[str, typer.Option(help="--batch: the field holding the response to attribute.")] = "target",
        id_field: Annotated[str, typer.Option(help="--batch: the field holding the query id (default: positional "
                                                   "ids line-N).")] = "id",
        max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate with --generate (at least 1).")] = 24,
        tokens: Annotated[str | None, typer.Option(help="Only these response token indices count, e.g. 0,1 (-1: the last token).")] = None,
        span: Annotated[str | None, typer.Option(help="Only response tokens overlapping this character span start,end.")] = None,
        top_k: Annotated[int, typer.Option(help="Proponents and opponents to return (verbatim index: documents "
                                                "per span).")] = 10,
        min_len: Annotated[int | None, typer.Option(help="Verbatim index: shortest span to report, in tokens "
                                                         "(default 8).")] = None,
        model: Annotated[str | None, typer.Option(help=f"Model (default: the one the index was built with). {MODEL_HELP}")] = None,
        neighbours: Annotated[bool, typer.Option(help="Include the neighbouring blocks' texts.")] = False,
        use_faiss: Annotated[bool, typer.Option("--faiss", help="Search with the index's FAISS index (its kind: "
                                                                "flat is exact, ivf-pq and hnsw approximate).")] = False,
        ray: Annotated[str | None, typer.Option(help="Exact search as Ray tasks, top-k per shard then a merge: "
                                                     "local, auto or a cluster address.")] = None,
        verify: Annotated[bool, typer.Option("--verify", help="Check every file's checksum now (by default "
                                                              "sizes and headers always, checksums on a file's "
                                                              "first open).")] = False,
        aggregate: Annotated[str, typer.Option(help="With several --index: mean or median of the runs' scores.")] = "mean",
        chat_template: TraceChatTemplate = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Top-k training examples that support (and oppose) a response, from an index (or several runs' indexes)."""
        from attrilens.training.index import TrainingIndex
        from attrilens.training.query_files import QueryRow
        from attrilens.training.store import read_manifest
        from attrilens.training.traced import record_trace

        queries = _trace_queries(ctx, prompt, target, generate, batch, prompt_field, target_field, id_field)
        if len(index) > 1:
            one = _trace_ensemble(ctx, index, generate, max_new_tokens, tokens, top_k, aggregate, chat_template)
            return _emit_traces(queries, one, as_json)
        if "--aggregate" in given_flags(ctx, set()):
            raise AttrilensError("--aggregate combines several --index (one per training run); with one index drop it "
                                 "(DataInf's checkpoint aggregation is an `index build` option).")
        index = index[0]
        manifest = read_manifest(index)
        model_dir = resolve_model(model) if model else manifest.get("model_dir") or manifest["model"]["name"]
        if not model_dir or not Path(model_dir).is_dir():
            raise AttrilensError(f"The model the index was built with ({model_dir}) is not on disk. Pass --model DIR.")
        span_t = _parse_ints(span, "--span")
        if span_t is not None and len(span_t) != 2:
            raise AttrilensError(f"--span takes two integers start,end, got {span!r}.")
        if max_new_tokens < 1:
            raise AttrilensError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
        asked = chat_template  # None: the model answers as it would a user (queries.answers_in_chat)
        if chat_template is None:  # encode the query as the index's eval queries were
            chat_template = manifest.get("chat_template")
        if manifest.get("method") == VERBATIM:
            bad = [f for f, on in (("--tokens", tokens is not None), ("--span", span is not None),
                                   ("--faiss", use_faiss), ("--neighbours", neighbours), ("--ray", ray is not None))
                   if on]
            if bad:
                raise AttrilensError(f"{', '.join(bad)} apply to gradient indexes, not to the verbatim index "
                                     f"{index}. Drop them.")
            from attrilens.training.verbatim import VerbatimIndex

            vidx = VerbatimIndex.open(index, load_lm(str(model_dir), chat_template), verify=True if verify else None)
            return _emit_traces(queries, lambda q: vidx.trace(
                q.prompt, target=q.target, generate=q.target is None, min_len=8 if min_len is None else min_len,
                top_k=top_k, max_new_tokens=max_new_tokens, chat_template=asked), as_json)
        if min_len is not None:
            raise AttrilensError(f"--min-len applies to verbatim indexes; {index} is a {manifest.get('method')} "
                                 "index. Drop it.")
        lm = load_lm(str(model_dir), chat_template)
        idx = TrainingIndex.open(index, lm, model_dir=model_dir, verify=True if verify else None)

        def one(q: QueryRow):
            result = idx.trace(q.prompt, target=q.target, generate=q.target is None,
                               tokens=_parse_ints(tokens, "--tokens"), span=tuple(span_t) if span_t else None,
                               top_k=top_k, neighbours=neighbours, use_faiss=use_faiss, ray=ray,
                               max_new_tokens=max_new_tokens, chat_template=asked)
            record_trace(index, result)  # what `curate` re-asks when it is given no --questions
            return result

        _emit_traces(queries, one, as_json)
