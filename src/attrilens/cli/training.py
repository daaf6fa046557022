"""CLI verbs of lens 2: `attrilens index build`, `attrilens trace`, `attrilens bench training`."""

from __future__ import annotations

import itertools
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from attrilens.cli.loading import CORPUS_HELP, MODEL_HELP, ChatTemplate, IdField, TextField, load_lm
from attrilens.cli.output import JsonFlag, choices_help, emit, emit_summary
from attrilens.errors import AttrilensError, check_output_dir
from attrilens.models import resolve_model
from attrilens.training.methods import TDA_METHODS, TDAMethod


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AttrilensError(f"{what} must be comma-separated integers like 0,2,3, got {text!r}.") from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_value(key: str, text: str, hint: Any) -> Any:
    """One --option value parsed to its field's type (int, float, bool, str, or one of those or None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    kind = args[0] if args else hint
    if optional and text.strip().lower() in ("none", "null"):
        return None
    if kind is bool and text.strip().lower() in _TRUE + _FALSE:
        return text.strip().lower() in _TRUE
    try:
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    type_name = " or ".join([getattr(a, "__name__", str(a)) for a in args or [hint]] + (["none"] if optional else []))
    raise AttrilensError(f"--option {key}={text!r}: {key} takes {type_name}. Pass e.g. --option {key}=VALUE "
                         f"with a {type_name} value.")


def method_options(method: type[TDAMethod], pairs: list[str]) -> dict[str, Any]:
    """`--option KEY=VALUE` pairs → the method's options (fields of its Options dataclass, parsed to their types)."""
    hints = typing.get_type_hints(method.Options)
    valid = method.option_names()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise AttrilensError(f"--option takes KEY=VALUE, got {pair!r}. Pass e.g. --option {valid[-1]}=VALUE.")
        if key not in valid:
            raise AttrilensError(f"Unknown option {key!r} for {method.name}. Valid options: {', '.join(valid)}.")
        out[key] = _parse_value(key, text, hints[key])
    return out


# trace's --chat-template: the same option names as every verb that loads a model; here it picks one prompt form for
# both writing a --generate response and scoring it
TraceChatTemplate = Annotated[bool | None, typer.Option(
    "--chat-template/--no-chat-template",
    help="Prompt the model through its chat template, or as plain text, both to write the --generate response and "
         "to score it (default: a chat model answers a question or instruction through its chat template and "
         "continues other text as plain text; the response is scored in the form the index was built with).")]

VERBATIM = "verbatim"  # verbatim span tracing (attrilens.training.verbatim): not a TDA_METHODS entry
_VERBATIM_BUILD = {"model", "corpus", "out", "method", "threads", "chat_template", "as_json", "text_field", "id_field"}


def _given(ctx: typer.Context, names: set[str]) -> list[str]:
    """The options of the running command given on the command line, outside `names`, as --flag spellings."""
    return [p.opts[0] if p.opts else p.name for p in ctx.command.params
            if p.name not in names and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"]


def _build_verbatim(ctx: typer.Context, model: str, corpus: Path, out: Path, chat_template: bool | None,
                    as_json: bool, fields: dict[str, str]) -> None:
    """`index build --method verbatim`: the corpus under the model's tokenizer in an infini-gram index."""
    from attrilens.training.verbatim import build_verbatim_index

    extra = _given(ctx, _VERBATIM_BUILD)
    if extra:
        raise AttrilensError(f"{', '.join(extra)} apply to gradient methods, not --method verbatim. Drop them.")
    check_output_dir(out)
    idx = build_verbatim_index(load_lm(str(resolve_model(model)), bool(chat_template)), corpus, out, progress=True,
                               **fields)
    m = idx.manifest
    emit_summary({"index": str(out), "method": VERBATIM, "documents": m["corpus"]["n_documents"],
                  "tokens": m["corpus"]["n_tokens"], "bytes_per_token": m.get("bytes_per_token"),
                  "build_seconds": m.get("build_seconds")}, as_json)


def _faiss_options(pairs: list[str] | None) -> dict[str, str]:
    """`--faiss-option KEY=VALUE` pairs → a dict (values checked by the FAISS builder)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AttrilensError(f"--faiss-option takes KEY=VALUE, got {pair!r}. Pass e.g. --faiss-option nprobe=32.")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _trace_queries(ctx: typer.Context, prompt: str | None, target: str | None, generate: bool, batch: Path | None,
                   prompt_field: str, target_field: str, id_field: str):
    """The queries of one `trace` call: the one --prompt (with --target or --generate), or every row of --batch."""
    from attrilens.training.query_files import QueryRow, iter_query_rows

    if (prompt is None) == (batch is None):
        raise AttrilensError("Pass exactly one of --prompt P or --batch FILE.")
    if batch is None:
        fields = [f for f in ("--prompt-field", "--target-field", "--id-field")
                  if f in _given(ctx, set())]
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

    bad = _given(ctx, {"index", "prompt", "target", "generate", "max_new_tokens", "tokens", "top_k", "aggregate",
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
    """Add the training-data attribution verbs to the CLI."""
    index_app = typer.Typer(help="Training-data attribution index: featurise a corpus once, query it many times.",
                            no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("build")
    def build(
        ctx: typer.Context,
        model: Annotated[str, typer.Option(help=f"Model (or LoRA adapter directory for datainf). {MODEL_HELP}")],
        corpus: Annotated[Path, typer.Option(help=CORPUS_HELP)],
        out: Annotated[Path, typer.Option(help="Index directory (created; an unfinished build there is resumed).")],
        method: Annotated[str, typer.Option(help=choices_help("Attribution method (verbatim: spans of the response "
                                                              "found word for word, OLMoTrace's way).",
                                                              [*TDA_METHODS.names(), VERBATIM]))] = "trackstar",
        proj_dim: Annotated[int | None, typer.Option(help="Projected features per checkpoint (methods that project; "
                                                          "0 = no projection; default: 256 per weight matrix "
                                                          "as a power of two in 2^12..2^16, e.g. 2^16 for "
                                                          "SmolLM2-135M).")] = None,
        eval_queries: Annotated[Path | None, typer.Option(help="JSONL queries {prompt,target} for TrackStar's R_eval.")] = None,
        block_len: Annotated[int, typer.Option(help="Tokens per training block.")] = 128,
        shard_size: Annotated[int | None, typer.Option(help="Blocks per shard file (default 1024, fewer when a "
                                                            "shard's float32 features would pass 1 GiB).")] = None,
        batch_size: Annotated[int, typer.Option(help="Examples per backward pass.")] = 16,
        dtype: Annotated[str, typer.Option(help="float16 or float32 feature shards.")] = "float16",
        seed: Annotated[int | None, typer.Option(help="Projection seed (default 0).")] = None,
        allocation: Annotated[str | None, typer.Option(help="Split of --proj-dim over the weights: proportional (to "
                                                            "each weight's size, the default) or equal (LoGra's one "
                                                            "side length).")] = None,
        lam: Annotated[float | None, typer.Option(help="TrackStar λ (default: eigenvalue-crossing rule).")] = None,
        damping: Annotated[float | None, typer.Option(help="TrackStar ridge on R, a fraction of its mean non-zero "
                                                           "eigenvalue (default 0.01; smaller: fact retrieval; "
                                                           "larger: one-step influence).")] = None,
        correction: Annotated[bool | None, typer.Option("--correction/--no-correction", help="TrackStar's Adam "
                                                        "second-moment correction (default on).")] = None,
        second_moments: Annotated[str | None, typer.Option(help="TrackStar's second moments: optimizer (the model's "
                                                               "optimizer.safetensors), estimate (from gradients "
                                                               "over a corpus sample; tune with --option "
                                                               "moment_kind=adam|adafactor, moment_sample=N, "
                                                               "moment_batch=B, moment_eps=E), or auto (default: "
                                                               "the optimizer state when the model has one, else "
                                                               "an estimate).")] = None,
        use_r: Annotated[bool | None, typer.Option("--r/--no-r", help="TrackStar's R^-1/2 (default on).")] = None,
        unit_norm: Annotated[bool | None, typer.Option("--unit-norm/--no-unit-norm", help="TrackStar's unit "
                                                       "normalisation (default on).")] = None,
        aggregate: Annotated[str | None, typer.Option(help="TracIn / DataInf aggregation over checkpoints: mean "
                                                           "(default) or median.")] = None,
        option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE: set any option of the method's options "
                                                               "(repeatable), e.g. --option datainf_scale=0.2.")] = None,
        use_faiss: Annotated[str | None, typer.Option("--faiss", help="Also write a FAISS index: flat (exact inner "
                                                      "product), ivf-pq or hnsw (approximate).")] = None,
        faiss_option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for --faiss (repeatable): ivf-pq "
                                                                    "nlist, m, nbits, nprobe, rerank; hnsw M, "
                                                                    "ef_construction, ef_search, rerank.")] = None,
        ray: Annotated[str | None, typer.Option(help="Featurise on Ray: local (a cluster sized to this machine), "
                                                     "auto (the running cluster) or its address; the corpus may "
                                                     "then be JSONL, Parquet or a datasets save_to_disk folder.")] = None,
        ray_workers: Annotated[int | None, typer.Option(help="Ray actors featurising shards (default: one per GPU, "
                                                             "else one per CPU).")] = None,
        ray_reduce: Annotated[str, typer.Option(help="How TrackStar's second moments are reduced on Ray: shard (in "
                                                     "shard order, byte-identical to a local build), worker (one "
                                                     "running sum per actor: for large --proj-dim) or auto (shard "
                                                     "up to d = 5792).")] = "auto",
        threads: Annotated[int | None, typer.Option(help="torch threads (1 is fastest on a busy 2-core machine).")] = None,
        text_field: TextField = "text",
        id_field: IdField = "id",
        chat_template: ChatTemplate = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Featurise a training corpus into an on-disk index (resumable, atomic per shard)."""
        from attrilens.training.index import build_index

        if threads is not None:
            import torch

            if threads < 1:
                raise AttrilensError(f"--threads must be at least 1, got {threads}.")
            torch.set_num_threads(threads)
        if method.replace("_", "-") == VERBATIM:
            return _build_verbatim(ctx, model, corpus, out, chat_template, as_json,
                                   {"text_field": text_field, "id_field": id_field})
        cls = TDA_METHODS.get(method)
        flags = {"seed": seed, "allocation": allocation, "lam": lam, "damping": damping, "correction": correction,
                 "second_moments": second_moments, "use_r": use_r, "unit_norm": unit_norm, "aggregate": aggregate}
        options = {k: v for k, v in flags.items() if v is not None}
        extra = method_options(cls, option or [])
        twice = sorted(set(extra) & (set(options) | {"block_len", "proj_dim"}))
        if twice:
            raise AttrilensError(f"{', '.join(twice)} given both as --option and as its own flag. Pass it once.")
        check_output_dir(out)
        model_dir = resolve_model(model)
        # training documents are plain text: queries are read as completions unless --chat-template asks otherwise
        lm = load_lm(str(model_dir), bool(chat_template))
        idx = build_index(lm, corpus, out, method=cls.name, proj_dim="auto" if proj_dim is None else proj_dim or None,
                          model_dir=model_dir,
                          eval_queries=eval_queries, shard_size=shard_size, batch_size=batch_size, dtype=dtype,
                          use_faiss=use_faiss or False, faiss_options=_faiss_options(faiss_option), ray=ray,
                          ray_workers=ray_workers, ray_reduce=ray_reduce, progress=True, text_field=text_field,
                          id_field=id_field, block_len=block_len, **options, **extra)
        m = idx.manifest
        emit_summary({"index": str(out), "method": m["method"], "examples": len(idx), "dim": m.get("dim", 0),
                      "shards": len(m.get("shards", [])), "build_seconds": m.get("build_seconds"),
                      "lambda": m.get("lambda"), "second_moments": m.get("second_moments")}, as_json)

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
        if "--aggregate" in _given(ctx, set()):
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

    @bench.command("capture")
    def bench_capture(
        steps: Annotated[int, typer.Option(help="Training steps per run.")] = 20,
        repeats: Annotated[int, typer.Option(help="Interleaved (plain, captured) pairs per setting.")] = 2,
        lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Also the LoRA trainer (default on).")] = True,
        lora_steps: Annotated[int, typer.Option(help="LoRA training steps per run (its steps are short).")] = 100,
        proj_dim: Annotated[int | None, typer.Option(help="Projected features of the captured index (default: "
                                                          "as `attrilens index build`).")] = None,
        method: Annotated[str, typer.Option(help="Captured method: grad-dot, grad-cos or trackstar.")] = "grad-dot",
        out: Annotated[Path | None, typer.Option(help="Also write the report here (capture-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Training-time overhead of capturing index features during training (tiny-model and LoRA trainers)."""
        from attrilens.bench import capture as bench_capture_mod

        if out is not None:
            check_output_dir(out)
        report = bench_capture_mod.run_benchmark(steps=steps, repeats=repeats, lora=lora, proj_dim=proj_dim,
                                                 method=method, lora_steps=lora_steps)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("training")
    def bench_training(
        model: Annotated[str | None, typer.Option(help="Model directory trained on --world (default: the demo target "
                                                      "model), or a registered real model (e.g. "
                                                      "smollm2-135m-instruct), which runs the real-model benchmark "
                                                      "on country facts.")] = None,
        world: Annotated[Path | None, typer.Option(help="Fact world directory (default: the demo world).")] = None,
        real: Annotated[bool, typer.Option("--real", help="The real-model benchmark (default model "
                                                          "smollm2-135m-instruct): gold retrieval on country facts, "
                                                          "tail-patch, projection fidelity at 2^12..2^16, fast vs "
                                                          "vmap speed, build s/document and peak RSS.")] = False,
        quick: Annotated[bool, typer.Option(help="Fewer queries and dimensions (minutes, not tens of minutes).")] = False,
        damping_sweep: Annotated[bool, typer.Option("--damping-sweep", help="Run TrackStar's ridge sweep (damping × λ rule × d) "
                                                         "instead of the method benchmark.")] = False,
        sweep_dim: Annotated[list[int] | None, typer.Option(help="Projection size of the ridge sweep (repeatable; "
                                                                 "default 4096 and 65536, --quick: 4096).")] = None,
        sweep_damping: Annotated[list[float] | None, typer.Option(help="Damping of the ridge sweep (repeatable; "
                                                                       "default 0.001 0.01 0.1 1).")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the report here (training-bench.md and .json; training-real-bench.* with --real).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Fact tracing (MRR, recall@10), tail-patch, projection fidelity and speed of every registered method."""
        from attrilens.bench import training as bench_mod
        from attrilens.models import MODELS

        if real or (model in MODELS and world is None):
            if damping_sweep:
                raise AttrilensError("--damping-sweep runs on a model trained on a fact world, not with --real. "
                                     "Pass one of them.")
            report = bench_mod.run_real_benchmark(model or bench_mod.REAL_MODEL, quick=quick)
        elif damping_sweep:
            n_queries, n_tail = (40, 15) if quick else (180, 40)
            dims = tuple(sweep_dim or ([4096] if quick else [4096, 65536]))
            report = bench_mod.damping_sweep(Path(model) if model else None, world, dims=dims, n_queries=n_queries,
                                             n_tail=n_tail, dampings=tuple(sweep_damping or (1e-3, 1e-2, 0.1, 1.0)))
        else:
            report = bench_mod.run_benchmark(model=Path(model) if model else None, world=world, quick=quick)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("misinfo")
    def bench_misinfo(
        run: Annotated[Path | None, typer.Option(help="A run of `python -m attrilens.demo.misinfo_build` (default: "
                                                     "the shipped story assets).")] = None,
        work: Annotated[Path | None, typer.Option(help="Where the indexes (and curation retrains) go; reused when "
                                                      "rerun (default: under the attrilens cache).")] = None,
        n_correct: Annotated[int, typer.Option(help="Correctly answered clean facts scored beside the wrong "
                                                    "answers.")] = 20,
        curation: Annotated[bool, typer.Option("--curation", help="Also run the curation benchmark: per method "
                                                                  "remove the top-k proponents of every wrong "
                                                                  "answer, retrain, re-ask (one retrain each: "
                                                                  "minutes).")] = False,
        k: Annotated[int, typer.Option(help="Proponents removed per wrong answer (--curation).")] = 4,
        out: Annotated[Path | None, typer.Option(help="Also write the report(s) here (misinfo-bench.*, "
                                                     "curation-bench.*).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """The misinformation story: recall/MRR of the planted documents behind each wrong answer (and of the true
        ones behind right answers), label mix and tail-patch per method; with --curation, fixes vs collateral."""
        from attrilens.bench.misinfo import run_curation_benchmark, run_misinfo_benchmark

        if n_correct < 0 or k < 1:
            raise AttrilensError(f"--n-correct must be ≥ 0 and --k ≥ 1, got {n_correct} and {k}.")
        reports = [run_misinfo_benchmark(run, work, n_correct=n_correct)]
        if curation:
            reports.append(run_curation_benchmark(run, work, k=k))
        for report in reports:
            print(report.to_json() if as_json else report.to_text())
            if out is not None:
                report.write(out)

    @bench.command("verbatim")
    def bench_verbatim(
        quick: Annotated[bool, typer.Option(help="Only the 10^6-token corpus.")] = False,
        size: Annotated[list[int] | None, typer.Option(help="Corpus size in tokens (repeatable; default 10^6, "
                                                            "10^7 and 10^8).")] = None,
        responses: Annotated[int, typer.Option(help="Responses traced per size.")] = 20,
        min_len: Annotated[int, typer.Option(help="Shortest span in tokens.")] = 8,
        model: Annotated[str | None, typer.Option(help=f"Model whose tokenizer indexes the corpus (default: the "
                                                      f"demo target model). {MODEL_HELP}")] = None,
        workdir: Annotated[Path | None, typer.Option(help="Where the temporary indexes go (default: the system "
                                                          "temporary folder).")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the report here (verbatim-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Verbatim span tracing: index build tokens/s, bytes/token, trace latency p50/p95 by corpus size."""
        from attrilens.bench import verbatim as bench_verbatim_mod

        if responses < 1 or min_len < 1 or any(s < 1 for s in size or []):
            raise AttrilensError("--responses, --min-len and --size must be positive. Pass positive integers.")
        if workdir is not None:
            check_output_dir(workdir, "--workdir")
            workdir.mkdir(parents=True, exist_ok=True)
        report = bench_verbatim_mod.run_benchmark(tuple(size) if size else None, quick=quick, n_responses=responses,
                                                  min_len=min_len, workdir=workdir,
                                                  model=resolve_model(model) if model else None)
        print(report.to_json() if as_json else report.to_text())
        if out is not None:
            report.write(out)

    @bench.command("scale")
    def bench_scale(
        part: Annotated[list[str] | None, typer.Option(help="Which parts (repeatable): ann (FAISS recall@10 and "
                                                           "latency), build (local vs Ray examples/s), cost (the "
                                                           "cost model on paper). Default: all three.")] = None,
        n: Annotated[list[int] | None, typer.Option(help="ann: index sizes N (repeatable; default 100000).")] = None,
        dim: Annotated[int, typer.Option(help="ann: feature size d.")] = 4096,
        kind: Annotated[list[str] | None, typer.Option(help="ann: FAISS kinds (repeatable; default ivf-pq hnsw).")] = None,
        queries: Annotated[int, typer.Option(help="ann: queries per N.")] = 100,
        workers: Annotated[list[int] | None, typer.Option(help="build: Ray worker counts (repeatable; default 1 2).")] = None,
        method: Annotated[str, typer.Option(help="build: the method of the demo index.")] = "grad-dot",
        out: Annotated[Path | None, typer.Option(help="Also write each report here (scale-*-bench.md and .json).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """The index past one machine: FAISS recall and latency, Ray build throughput, TrackStar's cost on paper."""
        from attrilens.bench import scale

        parts = part or ["ann", "build", "cost"]
        bad = sorted(set(parts) - {"ann", "build", "cost"})
        if bad:
            raise AttrilensError(f"Unknown --part {', '.join(bad)}. Use ann, build or cost.")
        if any(x < 1 for x in (n or [])) or dim < 1 or queries < 2:
            raise AttrilensError("--n and --dim must be positive and --queries at least 2.")
        for report in scale.run_benchmark(parts, ns=n or [100_000], d=dim, n_queries=queries,
                                          kinds=kind or ["ivf-pq", "hnsw"],
                                          workers=workers or [1, 2], method=TDA_METHODS.get(method).name):
            print(report.to_json() if as_json else report.to_text())
            if out is not None:
                report.write(out)
