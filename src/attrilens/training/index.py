"""The training-data attribution index: `build_index` (resumable, atomic per shard) and `TrainingIndex` (query).

Layout of an index directory:
    manifest.json              schema, {"method", "options"}, model + corpus fingerprints, shards (see store.py)
    corpus.parquet             block ids, texts, token ids (fingerprint in the metadata)
    preconditioner.safetensors the method's fitted state (TrackStar's R^(-1/2) in thin form, DataInf's λ_l)
    shards/shard-00000.npy     features, fp16 (or fp32), one row per block; .npy so search can memory-map them
    raw/                       features before a fit (TrackStar's R), only while building
    faiss.index                optional FAISS index (single dot-product methods): flat (exact), ivf-pq or hnsw (ann.py)

Every method-specific step is a hook of the method's class (`attrilens.training.methods`); the build machine
(`build.IndexBuild`: prepare → featurise → fit → finish → complete, its `manifest.Manifest` and `Stage`) orders
them, here with `build.LocalRunner` or on Ray with `distributed.RayRunner`; a train-time capture (`capture`) goes
through the same machine. This module checks the inputs, resumes or refuses an existing directory, and searches
the shards (`search`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attrilens.errors import AttrilensError
from attrilens.jsonl import iter_jsonl
from attrilens.lm import LM
from attrilens.results import Cost
from attrilens.training.ann import AnnIndex, faiss_params
from attrilens.training.build import IndexBuild, LocalRunner, eval_examples, eval_queries_entry
from attrilens.training.corpus import (
    Corpus,
    CorpusFile,
    document_batches,
    documents_fingerprint,
    make_corpus,
    write_corpus,
)
from attrilens.training.distributed import RayRunner, read_corpus, resolve_reduce, search_ray
from attrilens.training.gradients import Example
from attrilens.training.manifest import Manifest, Stage
from attrilens.training.methods import TDA_METHODS, Query, TDAMethod
from attrilens.training.queries import Answer, check_prompt, check_query, generate_answer
from attrilens.training.result import TraceHit, TraceResult
from attrilens.training.search import ScoreStream, finite_scores, topk_merge
from attrilens.training.store import (
    INDEX_SCHEMA,
    MANIFEST,
    PRECONDITIONER,
    build_lock,
    load_tensors,
    open_shards,
    read_manifest,
    sha256_file,
)


# ---------------------------------------------------------------------- build
def build_index(
    lm: LM,
    corpus: Corpus | Path | str | Sequence[dict],
    out: Path | str,
    *,
    method: str = "trackstar",
    proj_dim: int | str | None = "auto",
    model_dir: Path | str | None = None,
    eval_queries: Sequence[dict] | Path | str | None = None,
    shard_size: int | None = None,
    dtype: str = "float16",
    batch_size: int = 16,
    use_faiss: bool | str = False,
    faiss_options: dict | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    ray_reduce: str = "auto",
    progress: bool = True,
    text_field: str = "text",
    id_field: str = "id",
    **options,
) -> TrainingIndex:
    """Featurise a corpus with one method into an index directory (resumes an unfinished build of the same index).

    `options` are the method's own (`TDA_METHODS.get(method).Options`); `shard_size` None = `default_shard_size`
    (1024 rows, fewer for very wide features); `proj_dim` applies to the methods that
    project (it is ignored by DataInf and BM25): "auto" = the method's `default_proj_dim` for this model (256
    features per weight matrix, 2^12…2^16), None = no projection; `batch_size` is examples per backward pass
    (not part of the index). `use_faiss`: also write a FAISS index, True or "flat" (exact), "ivf-pq" or "hnsw"
    (approximate; `faiss_options` such as nlist, m, nprobe, M, ef_search). `ray`: featurise on Ray ("local", "auto"
    or a cluster address; the corpus may then also be Parquet or a `datasets` folder) with `ray_workers` actors;
    `ray_reduce`: how TrackStar's Σ ΦᵀΦ is reduced there ("shard", "worker" or "auto": `distributed.resolve_reduce`).

    A corpus path is any format `attrilens.corpus_formats` reads (JSONL, Parquet, a `datasets` folder, text files;
    `text_field` / `id_field` name its fields) and is streamed: one pass hashes the documents (bad input fails
    before anything is written; a resumed build with the same corpus reuses its corpus.parquet), a second
    tokenises them batch by batch into corpus.parquet, and shards are featurised from that file a row group at a
    time, so memory stays bounded whatever the corpus size. A `Corpus`, or any corpus with `ray`, is held in memory.
    """
    if dtype not in ("float16", "float32"):
        raise AttrilensError(f"dtype must be 'float16' or 'float32', not {dtype!r}.")
    if shard_size is not None and shard_size < 1:
        raise AttrilensError(f"shard_size must be positive, got {shard_size}.")
    resolve_reduce(ray_reduce, 0)  # an unknown kind fails before anything is written
    cls = TDA_METHODS.get(method)
    if "proj_dim" in cls.option_names():
        if proj_dim == "auto":
            rule = getattr(cls, "default_proj_dim", None)
            if rule is None:
                raise AttrilensError(f"{cls.name} has no default projection size. Pass proj_dim (--proj-dim).")
            proj_dim = rule(lm)
        elif isinstance(proj_dim, str):
            raise AttrilensError(f"proj_dim must be a positive integer, None or 'auto', got {proj_dim!r}.")
        options = {"proj_dim": proj_dim, **options}
    opts = cls.make_options(**options)
    lm.check_length(opts.block_len, "training blocks (block_len, --block-len)")
    out = Path(out)
    if ray is not None and isinstance(corpus, (str, Path)):
        # JSONL, Parquet or a `datasets` folder, read with Ray Data (in memory: a Ray build cuts it on the driver)
        corpus = read_corpus(corpus, ray, text_field=text_field, id_field=id_field)
    model_dir = Path(model_dir) if model_dir is not None else _default_model_dir(lm)
    if isinstance(eval_queries, (str, Path)):
        eval_queries = list(iter_jsonl(Path(eval_queries), require=("prompt", "target")))
    eval_queries = list(eval_queries or []) if cls.uses_eval_queries else []
    t0 = time.perf_counter()
    m = cls(opts, lm, model_dir, batch_size=batch_size)  # bad options fail here, before anything is written
    if isinstance(corpus, Corpus) or ray is not None:
        blocks = _as_corpus(corpus, lm, opts.block_len)  # in memory
        n_known = len(blocks)
    else:  # streamed: documents in batches → corpus.parquet → featurised shard by shard from that file
        def stream():
            return document_batches(corpus, text_field=text_field, id_field=id_field)

        # pass 1 (no tokenising): bad input fails here, before anything is written; the fingerprint says whether
        # an unfinished build's corpus.parquet is this corpus
        fingerprint, n_documents = documents_fingerprint(stream(), opts.block_len)
        blocks, n_known = None, 1
    shard_size = shard_size or default_shard_size(m.dim)
    faiss_kind = "flat" if use_faiss is True else use_faiss or None
    if faiss_kind:  # a bad kind or option fails here, before anything is written
        faiss_params(faiss_kind, n_known, m.dim, faiss_options)
    if faiss_kind and cls.stores_features and not m.supports_faiss:
        raise AttrilensError(f"FAISS search supports single-checkpoint dot-product methods, not {cls.name} here. "
                             "Build without --faiss.")

    def identity_of(fp: str, n_blocks: int | None, n_docs: int | None) -> dict:
        return {
            "schema": INDEX_SCHEMA,
            "method": cls.name,
            "options": opts.to_dict(),
            "dtype": dtype if cls.stores_features else None,
            "model": {"fingerprint": lm.fingerprint(), "name": lm.name},
            "corpus": {"fingerprint": fp, "n_blocks": n_blocks, "n_documents": n_docs, "block_len": opts.block_len},
            "eval_queries": eval_queries_entry(eval_queries),
            "shard_size": shard_size,
        }

    def check_same(manifest: dict, identity: dict) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Options) if f.default is not dataclasses.MISSING}
        diff = _differences({k: manifest.get(k) for k in identity}, identity, defaults)
        # a gradient method's weights; a manifest written before they were recorded: the method's legacy_params
        weights = getattr(m, "params", None)
        if weights is not None and manifest.get("weights", getattr(m, "legacy_params", weights)) != weights:
            diff.append("weights")
        if diff:
            raise AttrilensError(f"{out} holds an index built with different settings ({', '.join(diff)}). Use "
                                 "another --out, or delete that directory to rebuild.")

    out.mkdir(parents=True, exist_ok=True)
    with build_lock(out):  # one build at a time per --out
        mpath = out / MANIFEST
        old = json.loads(mpath.read_text()) if mpath.is_file() else None
        cpath = out / "corpus.parquet"
        if blocks is None:
            if old is not None and old.get("corpus", {}).get("fingerprint") != fingerprint:
                check_same(old, identity_of(fingerprint, None, n_documents))  # another corpus: before tokenising
            staged = CorpusFile(cpath) if cpath.is_file() else None
            if staged is None or staged.fingerprint != fingerprint or staged.block_len != opts.block_len:
                write_corpus(stream(), lm.tokenizer, cpath, block_len=opts.block_len, fingerprint=fingerprint,
                             n_documents=n_documents, progress=progress)
            blocks = CorpusFile(cpath)
            n_docs = blocks.n_documents
        else:
            n_docs = len(set(blocks.docs))
        identity = identity_of(blocks.fingerprint, len(blocks), n_docs)
        if old is not None:
            check_same(old, identity)
            if old.get("complete"):
                return TrainingIndex.open(out, lm, model_dir=model_dir)
            manifest = Manifest.from_dict(old)
        else:
            manifest = Manifest.from_dict({**identity, "model_dir": str(model_dir) if model_dir else None,
                                           "chat_template": lm.use_chat_template, "stage": Stage.FEATURES.value})
        if not cpath.is_file():
            blocks.to_parquet(cpath)
        manifest.facts.update(m.layout())
        build = IndexBuild(out, m, manifest, blocks, progress=progress)
        build.prepare()
        if cls.stores_features:
            runner = (RayRunner(address=ray, workers=ray_workers, batch_size=batch_size, reduce=ray_reduce)
                      if ray is not None else LocalRunner())
            with runner.session(build):
                build.featurise(runner)
                build.fit(runner, eval_examples(lm, eval_queries))
                build.finish(runner)
        build.complete(faiss_kind=faiss_kind, faiss_options=faiss_options,
                       build_seconds=round(manifest.facts.get("build_seconds", 0.0) + time.perf_counter() - t0, 3))
        return TrainingIndex.open(out, lm, model_dir=model_dir)


SHARD_BYTES = 1 << 30  # the fp32 features of one shard held in memory while it is featurised (default sizing)


def default_shard_size(dim: int) -> int:
    """Rows per shard: 1024, fewer when a shard's fp32 features would pass SHARD_BYTES (DataInf's unprojected LoRA
    gradients over several checkpoints are millions of features an example: 1024 rows of them do not fit in RAM)."""
    return max(1, min(1024, SHARD_BYTES // (4 * max(1, int(dim)))))


def _differences(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """Keys whose values differ (options one by one, as options.<name>). An option missing from `old` (an index
    written before the option existed) matches when the new value is its default (`defaults`)."""
    diff = []
    defaults = defaults or {}
    for k, v in new.items():
        if k == "options" and isinstance(old.get(k), dict):
            was = {**{o: d for o, d in defaults.items() if o not in old[k]}, **old[k]}
            diff += [f"options.{o}" for o in sorted(set(v) | set(was)) if was.get(o) != v.get(o)]
        elif k == "model" and isinstance(old.get(k), dict) and isinstance(v, dict):
            if old[k].get("fingerprint") != v.get("fingerprint"):  # the same weights from another folder match
                diff.append(k)
        elif old.get(k) != v:
            diff.append(k)
    return diff


def _as_corpus(corpus, lm: LM, block_len: int) -> Corpus:
    if isinstance(corpus, Corpus):
        if corpus.block_len != block_len:
            raise AttrilensError(f"The corpus was cut into blocks of {corpus.block_len} tokens, the method asks for "
                                 f"{block_len}. Pass matching block_len.")
        return corpus
    return make_corpus(corpus, lm.tokenizer, block_len=block_len)


def _default_model_dir(lm: LM) -> Path | None:
    p = Path(lm.name) if lm.name else None
    return p if p is not None and p.is_dir() else None


# ---------------------------------------------------------------------- query
@dataclasses.dataclass(frozen=True)
class TraceQuery:
    """One checked query: the prompt, the response attributed, the response tokens that count (None = all)."""

    prompt: str
    target: str
    tokens: list[int] | None
    query: Query


class TrainingIndex:
    """An opened index: memory-mapped shards, the corpus, and the method that featurises and scores queries."""

    def __init__(self, path: Path, manifest: dict, corpus: Corpus | CorpusFile, lm: LM, method: TDAMethod, *,
                 verify: bool | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.corpus = corpus
        self.lm = lm
        self.method = method
        self.shards = open_shards(self.path, manifest, verify=verify)
        self._ann: AnnIndex | None = None  # the FAISS index, read on the first FAISS search

    @property
    def method_name(self) -> str:
        """The registered name of the method the index was built with."""
        return self.manifest["method"]

    def __len__(self) -> int:
        return len(self.corpus)

    @classmethod
    def open(cls, path: Path | str, lm: LM, *, corpus: Path | str | Sequence[dict] | None = None,
             model_dir: Path | str | None = None, verify: bool | None = None, text_field: str = "text",
             id_field: str = "id") -> TrainingIndex:
        """Open an index for querying with `lm`; errors if it was built with another model or (when given) corpus,
        or if a file is damaged: sizes and headers are always checked, checksums on a file's first open or with
        `verify=True` (CLI `--verify`). `text_field` / `id_field`: the corpus's fields, as `build_index` takes them."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("method") == "verbatim":
            raise AttrilensError(f"{path} is a verbatim index: open it with attrilens.training.verbatim.VerbatimIndex "
                                 "(`attrilens trace` opens either kind).")
        fp = lm.fingerprint()
        if manifest["model"]["fingerprint"] != fp:
            raise AttrilensError(f"The index in {path} was built with another model ({manifest['model']['name']}, "
                                 f"fingerprint {manifest['model']['fingerprint'][:12]}) than the one given "
                                 f"({lm.name}, {fp[:12]}). Query it with that model, or rebuild the index.")
        blocks = CorpusFile(path / "corpus.parquet")  # read a row group at a time: hits, not the whole corpus
        if blocks.fingerprint != manifest["corpus"]["fingerprint"] or len(blocks) != manifest["corpus"]["n_blocks"]:
            raise AttrilensError(f"{path}/corpus.parquet does not match the manifest. Rebuild the index.")
        if corpus is not None:
            # the fingerprint hashes documents, not tokens: streamed, nothing tokenised
            given, _ = documents_fingerprint(document_batches(corpus, text_field=text_field, id_field=id_field),
                                             blocks.block_len)
            if given != blocks.fingerprint:
                raise AttrilensError(f"The corpus has changed since the index in {path} was built (fingerprint "
                                     f"{given[:12]} vs {blocks.fingerprint[:12]}). Rebuild the index for this corpus.")
        method_cls = TDA_METHODS.get(manifest["method"])
        mdir = Path(model_dir) if model_dir is not None else _default_model_dir(lm)
        if mdir is None and manifest.get("model_dir") and Path(manifest["model_dir"]).is_dir():
            mdir = Path(manifest["model_dir"])
        method = method_cls(method_cls.make_options(**manifest["options"]), lm, mdir)
        method.load(_load_state(path, manifest, verify), blocks)
        method.check_state()
        if method.dim != manifest["dim"]:
            raise AttrilensError(f"The method gives {method.dim} features but the index holds {manifest['dim']}. "
                                 "Rebuild it.")
        return cls(path, manifest, blocks, lm, method, verify=verify)

    # ------------------------------------------------------------------ scoring
    def score_stream(self, query: torch.Tensor | str) -> ScoreStream:
        """Yield (row offset, scores) over the shards for a query vector (or text) from `method.query`; a NaN or
        infinite score is an error naming the rows (a damaged shard), never a ranking."""
        yield from finite_scores(self.method.score_stream(self.shards, query), f"The index in {self.path}")

    def scores(self, query: Example | str | Query) -> np.ndarray:
        """Scores of every block for one query: an Example (gradient methods), its text (BM25), or a Query (any)."""
        if not isinstance(query, Query):
            query = Query(text=query) if isinstance(query, str) else Query(example=query)
        return np.concatenate([s for _, s in self.score_stream(self.method.query(query))])

    # ------------------------------------------------------------------ trace
    def trace(self, prompt: str, target: str | None = None, generate: bool = False, tokens: Sequence[int] | None = None,
              top_k: int = 10, *, span: tuple[int, int] | None = None, neighbours: bool = False,
              use_faiss: bool = False, ray: str | None = None, max_new_tokens: int = 24,
              chat_template: bool | None = None) -> TraceResult:
        """Top-k proponents and opponents of the response (target, or generated) among the training blocks: exact
        blocked search, or with `use_faiss` the index's FAISS index, or with `ray` exact map-reduce on Ray. A
        generated response is written the way the model answers (`chat_template`: True/False, or None for
        `queries.answers_in_chat`'s choice) and scored in this index's form; the result names both forms."""
        cost = Cost()
        t0 = time.perf_counter()
        check_query(prompt, target, generate, top_k)
        if max_new_tokens < 1:
            raise AttrilensError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        answer = self.answer(prompt, max_new_tokens, chat_template) if generate else None
        if answer is not None:
            target = answer.target
        query = self.query(prompt, target, tokens, span=span)
        q = self.method.query(query.query)
        passes = self.method.query_passes
        cost.add(forward_passes=passes, tokens=len(query.query.example.ids) * passes)
        chosen, target = query.tokens, query.target
        n = len(self)
        k = min(top_k, n)
        if use_faiss and ray is not None:
            raise AttrilensError("Pass one of --faiss and --ray: FAISS searches its own index on this machine.")
        if use_faiss:
            if "faiss" not in self.manifest:
                raise AttrilensError("This index has no FAISS index. Rebuild with --faiss KIND, or search without it.")
            if self._ann is None:
                self._ann = AnnIndex(self.path, self.manifest["faiss"])
            bi, bs, wi, ws = self._ann.search(q.numpy(), k, self.shards)
            cost.extra["search"] = self._ann.label
        elif ray is not None:
            if not self.method.supports_faiss or not torch.is_tensor(q):
                raise AttrilensError(f"Search on Ray scores one inner product per row, which {self.method_name} is "
                                     "not here. Search without --ray.")
            bi, bs, wi, ws = search_ray(self.path, self.manifest["shards"], q, k, self.method.bounded, ray)
            cost.extra["search"] = "ray map-reduce (exact)"
        else:
            bi, bs, wi, ws = topk_merge(self.score_stream(q), n, k)
        if not self.method.has_opponents:
            wi, ws = np.zeros(0, int), np.zeros(0)
        cost.seconds = time.perf_counter() - t0
        cost.extra["examples_scored"] = n
        return TraceResult(self.method_name, prompt, target, chosen, self._hits(bi, bs, neighbours),
                           self._hits(wi, ws, neighbours), cost,
                           generated_with=answer.generated_with if answer else None,
                           scored_as=answer.scored_as if answer else None)

    def answer(self, prompt: str, max_new_tokens: int = 24, chat_template: bool | None = None) -> Answer:
        """The model's own greedy response to `prompt` as it answers (`queries.generate_answer`), with the target
        that `trace(generate=True)` scores in this index's form."""
        return generate_answer(self.lm, prompt, max_new_tokens, chat_template)

    def generate_target(self, prompt: str, max_new_tokens: int = 24, chat_template: bool | None = None) -> str:
        """The target `trace(generate=True)` attributes: the model's own greedy response, as scored here."""
        return self.answer(prompt, max_new_tokens, chat_template).target

    def query(self, prompt: str, target: str | None, tokens: Sequence[int] | None = None, *,
              span: tuple[int, int] | None = None) -> TraceQuery:
        """Check and tokenise one query: the prompt, the response to attribute and which of its tokens count."""
        check_prompt(prompt)
        if target is None:
            raise AttrilensError("Pass exactly one of a target response or generate=True (--target T or --generate).")
        if not target:
            raise AttrilensError("The target is empty. Pass a non-empty target response.")
        prompt_ids = self.lm.encode_prompt(prompt)
        try:
            response_ids = self.lm.encode_response(target)
        except AttrilensError as exc:
            raise AttrilensError(f"The target cannot be tokenised as given: {exc}") from None
        self.lm.check_length(len(prompt_ids) + len(response_ids), "prompt and target")
        if span is not None:
            tokens = _span_tokens(self.lm, response_ids, target, span)
        chosen = list(tokens) if tokens is not None else None
        ex = Example.response(prompt_ids, response_ids, chosen, name="query")
        if chosen is not None:  # validated above; negative indices count from the end, reported as positions
            chosen = sorted({t % len(response_ids) for t in chosen})
        text = target if chosen is None else self.lm.tokenizer.decode([response_ids[t] for t in chosen])
        return TraceQuery(prompt, target, chosen, Query(example=ex, text=f"{prompt} {text}"))

    def hits(self, idx: np.ndarray, scores: np.ndarray, neighbours: bool = False) -> list[TraceHit]:
        """Ranked hits for block indices and their scores (rank 1 first)."""
        return self._hits(idx, scores, neighbours)

    def _hits(self, idx: np.ndarray, scores: np.ndarray, neighbours: bool) -> list[TraceHit]:
        return [TraceHit(rank, self.corpus.docs[i], int(self.corpus.blocks[i]), float(s), self.corpus.texts[i],
                         self.corpus.neighbours(i) if neighbours else None)
                for rank, (i, s) in enumerate(zip(idx.tolist(), scores.tolist(), strict=True), 1)]


def _load_state(path: Path, manifest: dict, verify: bool | None) -> dict[str, torch.Tensor]:
    """The method's fitted state, checked against what the manifest recorded at the end of the build."""
    pre, recorded = path / PRECONDITIONER, manifest.get("preconditioner")
    if recorded:
        if not pre.is_file():
            raise AttrilensError(f"{pre} is missing: it holds the method's fitted state. Restore it, or rebuild the "
                                 "index.")
        if pre.stat().st_size != recorded["bytes"] or (verify and sha256_file(pre) != recorded["sha256"]):
            raise AttrilensError(f"{pre} is not the file the build wrote (size or checksum differs). Restore it, or "
                                 "rebuild the index.")
    return load_tensors(pre)


def _span_tokens(lm: LM, response_ids: list[int], text: str, span: tuple[int, int]) -> list[int]:
    """Indices of the response tokens that overlap the character span [start, end) of the response text."""
    start, end = span
    if not 0 <= start < end <= len(text):
        raise AttrilensError(f"Character span {span} is not inside the {len(text)}-character response. "
                             "Pass 0 <= start < end <= len(response).")
    out, pos = [], 0
    for t in range(len(response_ids)):
        nxt = len(lm.tokenizer.decode(response_ids[: t + 1], clean_up_tokenization_spaces=False))
        if pos < end and nxt > start:
            out.append(t)
        pos = nxt
    return out
