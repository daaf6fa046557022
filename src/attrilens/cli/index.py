"""CLI verb that builds a training-data index: `attrilens index build` (a TDA method's features, or the verbatim
index), with `--option NAME=VALUE` reaching any option of the method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attrilens.cli.loading import CORPUS_HELP, MODEL_HELP, ChatTemplate, IdField, TextField, load_lm
from attrilens.cli.options import given_flags, given_values, option_flag
from attrilens.cli.output import JsonFlag, choices_help, emit_summary
from attrilens.errors import AttrilensError, check_output_dir
from attrilens.models import resolve_model
from attrilens.options import merge_values, parse_assignments, parse_texts
from attrilens.training.methods import TDA_METHODS

IndexOption = option_flag("datainf_scale=0.2", "training")
VERBATIM = "verbatim"  # verbatim span tracing (attrilens.training.verbatim): not a TDA_METHODS entry
_VERBATIM_BUILD = {"model", "corpus", "out", "method", "threads", "chat_template", "as_json", "text_field", "id_field"}


def _build_verbatim(ctx: typer.Context, model: str, corpus: Path, out: Path, chat_template: bool | None,
                    as_json: bool, fields: dict[str, str]) -> None:
    """`index build --method verbatim`: the corpus under the model's tokenizer in an infini-gram index."""
    from attrilens.training.verbatim import build_verbatim_index

    extra = given_flags(ctx, _VERBATIM_BUILD)
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


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the `index` group and its `build` verb to the CLI."""
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
        option: IndexOption = None,
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
        named = {k: v for k, v in flags.items() if v is not None}
        named.update(given_values(ctx, {"block_len": block_len, "proj_dim": proj_dim or None}))  # --proj-dim 0: None
        options = merge_values(named, parse_texts(cls.Options, parse_assignments(option), cls.option_owner()))
        proj = options.pop("proj_dim", "auto" if proj_dim is None else proj_dim or None)
        block_len = options.pop("block_len", block_len)
        check_output_dir(out)
        model_dir = resolve_model(model)
        # training documents are plain text: queries are read as completions unless --chat-template asks otherwise
        lm = load_lm(str(model_dir), bool(chat_template))
        idx = build_index(lm, corpus, out, method=cls.name, proj_dim=proj, model_dir=model_dir,
                          eval_queries=eval_queries, shard_size=shard_size, batch_size=batch_size, dtype=dtype,
                          use_faiss=use_faiss or False, faiss_options=_faiss_options(faiss_option), ray=ray,
                          ray_workers=ray_workers, ray_reduce=ray_reduce, progress=True, text_field=text_field,
                          id_field=id_field, block_len=block_len, **options)
        m = idx.manifest
        emit_summary({"index": str(out), "method": m["method"], "examples": len(idx), "dim": m.get("dim", 0),
                      "shards": len(m.get("shards", [])), "build_seconds": m.get("build_seconds"),
                      "lambda": m.get("lambda"), "second_moments": m.get("second_moments")}, as_json)
