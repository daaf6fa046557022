"""Verbatim span tracing (OLMoTrace on infini-gram): planted spans are found with exactly their documents and
character offsets; counts and longest matches equal a brute-force search; no span means an empty result; the
index refuses another tokenizer, survives an interrupted build, and the CLI gives one-line errors."""

from __future__ import annotations

import json
import os
import random
import re
import sys

import numpy as np
import pytest

pytest.importorskip("infini_gram")

from attrilens.demo.paths import ASSETS, demo_model_dir  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.lm import LM  # noqa: E402
from attrilens.testing import tiny_lm  # noqa: E402
from attrilens.training.verbatim import VerbatimIndex, VerbatimResult, build_verbatim_index  # noqa: E402
from attrilens.training.verbatim import build as vbuild  # noqa: E402
from attrilens.training.verbatim.spans import maximal_spans, select_spans, span_budget  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lm() -> LM:
    return tiny_lm("llama", seed=1)  # byte-level BPE, 300 entries


@pytest.fixture(scope="module")
def demo_lm() -> LM:
    return LM.from_pretrained(demo_model_dir("target"))  # another tokenizer (2048 entries)


def _word(rng: random.Random, letters: str, lo: int = 2, hi: int = 6) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def _corpus(seed: int, n_docs: int = 60) -> tuple[list[dict], random.Random]:
    """Random documents of lowercase words from a 150-word vocabulary (so short phrases recur across documents)."""
    rng = random.Random(seed)
    vocab = [_word(rng, "abcdefghijklmnop") for _ in range(150)]
    docs = [{"id": f"d{k:03d}-{_word(rng, 'xyz', 3, 3)}", "text": " ".join(rng.choice(vocab) for _ in
                                                                           range(rng.randint(20, 50)))}
            for k in range(n_docs)]
    return docs, rng


def _filler(rng: random.Random, n: int) -> str:
    """Words of capitals and digits: no token of them occurs in the lowercase corpus."""
    return " ".join(_word(rng, "QWXYZ0123456789") for _ in range(n))


# ---------------------------------------------------------------------------------------------- brute force
def _as_str(ids) -> str:
    return "".join(chr(0x100 + int(t)) for t in ids)


def _brute(lm: LM, docs: list[dict]):
    """The corpus as one string, one character per token, documents separated by a character no token maps to."""
    toks = [lm.tokenizer(d["text"], add_special_tokens=False)["input_ids"] for d in docs]
    return "\x00".join(_as_str(t) for t in toks), toks


def _count(corpus: str, ids) -> int:
    return sum(1 for _ in re.finditer(f"(?={re.escape(_as_str(ids))})", corpus))


def _longest(corpus: str, ids: list[int], left: int) -> int:
    k = 0
    while left + k < len(ids) and _as_str(ids[left:left + k + 1]) in corpus:
        k += 1
    return left + k


# ---------------------------------------------------------------------------------------------- selection rules
def test_span_selection_rules_on_random_inputs():
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 60)
        ends = [min(n, left + rng.randint(0, 12)) for left in range(n)]
        min_len = rng.randint(1, 6)
        spans = maximal_spans(ends, min_len)
        naive = [(a, ends[a]) for a in range(n) if ends[a] - a >= min_len]
        assert set(spans) == {s for s in naive if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in naive)}
        sums = [rng.uniform(-50, 0) for _ in spans]
        k = rng.randint(1, 4)
        kept = select_spans(spans, sums, k)
        assert len(kept) <= k and kept == sorted(kept)
        assert all(a[1] <= b[0] for a, b in zip(kept, kept[1:], strict=False))  # non-overlapping
        if spans:
            assert spans[min(range(len(spans)), key=lambda i: (sums[i], spans[i][0]))] in kept  # the rarest is kept
    assert span_budget(24) == 2 and span_budget(20) == 1 and span_budget(21) == 2 and span_budget(5, 3) == 3


# ---------------------------------------------------------------------------------------------- planted spans
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_spans_are_found_with_exactly_their_documents_and_offsets(lm, tmp_path, seed):
    docs, rng = _corpus(seed)
    planted = {"A": (" ".join(_word(rng, "abcdefghijklmnop") for _ in range(10)), rng.sample(range(len(docs)), 2)),
               "B": (" ".join(_word(rng, "abcdefghijklmnop") for _ in range(10)), rng.sample(range(len(docs)), 1))}
    for phrase, where in planted.values():
        for d in where:
            words = docs[d]["text"].split(" ")
            at = rng.randint(1, len(words) - 1)  # never first: a document's first word has no leading space
            docs[d]["text"] = " ".join(words[:at] + [phrase] + words[at:])
    target = f"{_filler(rng, 4)}\n {planted['A'][0]}\n{_filler(rng, 5)}\n {planted['B'][0]}\n{_filler(rng, 3)}"
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    result = idx.trace("Where does this come from?", target=target, min_len=6)

    assert [s.text for s in result.spans] == [" " + planted["A"][0], " " + planted["B"][0]]
    corpus, _ = _brute(lm, docs)
    ids = lm.encode_response(target)
    for span, (phrase, where) in zip(result.spans, planted.values(), strict=True):
        assert target[span.start:span.end] == span.text
        assert span.start == target.index("\n " + phrase) + 1
        assert span.count == len(where) == _count(corpus, ids[span.tokens[0]:span.tokens[1]])
        assert {d.id for d in span.documents} == {docs[k]["id"] for k in where}
        assert [d.rank for d in span.documents] == list(range(1, len(where) + 1))
        for d in span.documents:
            text = next(x["text"] for x in docs if x["id"] == d.id)
            at = text.index(" " + phrase)
            assert d.text == text and d.matches == [(at, at + len(phrase) + 1)]
        assert np.isfinite(span.unigram_logprob) and span.unigram_logprob < 0
    assert result.n_corpus_tokens == sum(len(t) for t in _brute(lm, docs)[1])


def test_longest_matches_counts_and_documents_equal_brute_force(lm, tmp_path):
    docs, rng = _corpus(5, n_docs=40)
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    corpus, doc_tokens = _brute(lm, docs)
    for _ in range(4):  # responses spliced from corpus pieces: many partial matches of every length
        pieces = []
        for _piece in range(4):
            words = rng.choice(docs)["text"].split(" ")
            a = rng.randint(0, len(words) - 6)
            pieces.append(" ".join(words[a:a + rng.randint(3, 8)]))
        target = " " + " ".join(pieces)
        ids = lm.encode_response(target)
        assert idx._ends(ids) == [_longest(corpus, ids, left) for left in range(len(ids))]
        result = idx.trace("q", target=target, min_len=4, top_k=3, max_spans=3)
        assert result.spans, target
        for s in result.spans:
            span = ids[s.tokens[0]:s.tokens[1]]
            assert s.count == _count(corpus, span) >= 1
            containing = [k for k, t in enumerate(doc_tokens) if _as_str(span) in _as_str(t)]
            assert len(s.documents) == min(3, len(containing))
            for d in s.documents:
                k = next(i for i, x in enumerate(docs) if x["id"] == d.id)
                assert k in containing
                assert len(d.matches) == _count(_as_str(doc_tokens[k]), span)
                assert all(d.text[a:b] == s.text for a, b in d.matches)
            assert [d.score for d in s.documents] == sorted((d.score for d in s.documents), reverse=True)


def test_a_query_that_sorts_before_every_suffix_still_matches(lm, tmp_path):
    """infini-gram 2.6 never compares such a query with the rank-0 suffix; the index recomputes that case."""
    docs, _ = _corpus(9, n_docs=20)
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    first = [int(t) for t in idx._first[:12]]
    k = next(i for i, t in enumerate(first) if t != 0xFFFF and (t & 0xFF) > 0 and i >= 3)  # a lower token fits
    lower = next(t for t in range(len(lm.tokenizer)) if t.to_bytes(2, "little") < first[k].to_bytes(2, "little"))
    ids = first[:k] + [lower]
    corpus, _ = _brute(lm, docs)
    assert idx._ends(ids)[0] == _longest(corpus, ids, 0) == k


def test_no_span_gives_an_empty_result_not_noise(lm, tmp_path):
    docs, rng = _corpus(3)
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    result = idx.trace("q", target=" " + _filler(rng, 12), min_len=4)
    assert result.spans == [] and result.to_dict()["spans"] == [] and len(result.to_frame()) == 0
    short = " " + docs[0]["text"].split(" ")[1]  # a real corpus word, shorter than min_len tokens
    assert idx.trace("q", target=short, min_len=40).spans == []
    with pytest.raises(AttrilensError, match="empty"):
        idx.trace("q", target="")
    with pytest.raises(AttrilensError, match="empty"):
        idx.trace("q", target="   ")


def test_a_corpus_of_three_short_documents_is_indexed(lm, tmp_path):
    """rust_indexing's concat panics on tiny tables with several threads; small corpora build with one."""
    rng = random.Random(5)
    docs = [{"id": f"d{k}", "text": _filler(rng, 6)} for k in range(3)]
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    words = docs[1]["text"].split(" ")
    target = " " + " ".join(words[1:])
    got = idx.trace("q", target=target, min_len=2)
    assert [d.id for s in got.spans for d in s.documents] and {d.id for s in got.spans for d in s.documents} == {"d1"}


def test_a_vocabulary_over_65535_is_stored_through_a_dense_map(tmp_path):
    """Gemma-3 has 262144 entries: token ids above 65535 must be stored (as dense u16 ids) and found."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    lm = LM(tiny_lm("llama").model, hf, chat_template=False, name="wordlevel-70k")
    rng = random.Random(11)
    docs = [{"id": f"d{k}", "text": " ".join(f"w{rng.randrange(70_000)}" for _ in range(30))} for k in range(30)]
    phrase = " ".join(f"w{rng.randrange(65_536, 70_000)}" for _ in range(8))
    docs[7]["text"] += " " + phrase
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    assert idx.manifest["tokenizer"]["remapped"]
    assert idx.manifest["corpus"]["distinct_tokens"] == len({w for d in docs for w in d["text"].split(" ")})
    result = idx.trace("q", target=f"w1 {phrase} w2", min_len=5)
    assert [s.text.strip() for s in result.spans] == [phrase] and result.spans[0].count == 1  # space: a joiner
    assert [d.id for d in result.spans[0].documents] == ["d7"]
    d = result.spans[0].documents[0]
    assert [d.text[a:b].strip() for a, b in d.matches] == [phrase]


# ---------------------------------------------------------------------------------------------- index files
def test_another_tokenizer_is_refused(lm, demo_lm, tmp_path):
    docs, _ = _corpus(2, n_docs=10)
    build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    VerbatimIndex.open(tmp_path / "idx", tiny_lm("gpt2"))  # same tokenizer, another model: fine
    with pytest.raises(AttrilensError, match="another tokenizer"):
        VerbatimIndex.open(tmp_path / "idx", demo_lm)
    from attrilens.training import TrainingIndex

    with pytest.raises(AttrilensError, match="is a verbatim index: open it with"):
        TrainingIndex.open(tmp_path / "idx", lm)


def test_an_interrupted_build_reads_as_incomplete_and_resumes(lm, tmp_path, monkeypatch):
    docs, rng = _corpus(4, n_docs=30)
    out = tmp_path / "idx"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vbuild, "_finish", killed)  # dies while renaming the first token file into place
    with pytest.raises(KeyboardInterrupt):
        build_verbatim_index(lm, docs, out, progress=False)
    with pytest.raises(AttrilensError, match="no manifest"):
        VerbatimIndex.open(out, lm)
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()

    monkeypatch.setattr(vbuild, "_suffix_array", killed)  # dies building the suffix array
    with pytest.raises(KeyboardInterrupt):
        build_verbatim_index(lm, docs, out, progress=False)
    with pytest.raises(AttrilensError, match="incomplete"):
        VerbatimIndex.open(out, lm)
    tokens = out / vbuild.TOKENS
    stamp = tokens.stat().st_mtime_ns
    monkeypatch.undo()

    idx = build_verbatim_index(lm, docs, out, progress=False)  # resumes: the tokenised stage is kept
    assert tokens.stat().st_mtime_ns == stamp and idx.manifest["complete"]
    target = " " + " ".join(docs[3]["text"].split(" ")[2:12])
    fresh = build_verbatim_index(lm, docs, tmp_path / "fresh", progress=False)
    assert idx.trace("q", target=target, min_len=4).to_dict()["spans"] == \
        fresh.trace("q", target=target, min_len=4).to_dict()["spans"]
    with pytest.raises(AttrilensError, match="different settings"):
        build_verbatim_index(lm, docs[:-1], out, progress=False)

    (out / vbuild.TABLE).write_bytes(b"\0" * 3)  # truncated after the build
    with pytest.raises(AttrilensError, match="truncated"):
        VerbatimIndex.open(out, lm)


def test_a_corpus_too_large_for_the_disk_is_refused_before_writing(lm, tmp_path, monkeypatch):
    import collections

    free = collections.namedtuple("usage", "total used free")(10**9, 10**9 - 1000, 1000)
    monkeypatch.setattr(vbuild.shutil, "disk_usage", lambda path: free)
    with pytest.raises(AttrilensError, match=r"needs about .* which has .* free"):
        build_verbatim_index(lm, _corpus(1, n_docs=10)[0], tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_result_json_round_trip_and_frame(lm, tmp_path):
    docs, rng = _corpus(6)
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    target = " " + " ".join(docs[1]["text"].split(" ")[1:9]) + "\n " + " ".join(docs[2]["text"].split(" ")[3:11])
    result = idx.trace("q", target=target, min_len=4, max_spans=4)
    assert result.spans
    back = VerbatimResult.from_json(result.to_json())
    assert back.to_dict() == result.to_dict() == json.loads(result.to_json())
    d = result.to_dict()
    assert d["schema"] == "attrilens/verbatim/v1" and d["method"] == "verbatim" and d["min_len"] == 4
    assert set(d["spans"][0]) == {"start", "end", "text", "tokens", "count", "unigram_logprob", "documents"}
    assert set(d["spans"][0]["documents"][0]) == {"rank", "id", "score", "text", "matches"}
    assert len(result.to_frame()) == sum(len(s.documents) for s in result.spans)
    with pytest.raises(AttrilensError, match="verbatim/v1"):
        VerbatimResult.from_json(json.dumps({"schema": "attrilens/training/v1"}))


# ---------------------------------------------------------------------------------------------- real tokenizer
def test_real_tokenizer_on_real_text(tmp_path):
    """SmolLM2's tokenizer (49152 entries) on Python's own documentation text, a planted paragraph found."""
    from pydoc_data.topics import topics

    from transformers import AutoTokenizer

    from attrilens.models import get

    hf = AutoTokenizer.from_pretrained(get("smollm2-135m-instruct", progress=False))
    lm = LM(tiny_lm("llama").model, hf, chat_template=False, name="smollm2-tokenizer")
    names = sorted(topics)[:60]
    docs = [{"id": n, "text": " ".join(topics[n].split())[:3000]} for n in names]
    idx = build_verbatim_index(lm, docs, tmp_path / "idx", progress=False)
    words = docs[17]["text"].split(" ")
    piece = " ".join(words[20:45])
    result = idx.trace("What does the documentation say?", target=f"Quote: ⟨{piece}⟩", min_len=8)
    assert result.spans and max(len(s.text) for s in result.spans) >= len(piece) - 12
    best = max(result.spans, key=lambda s: len(s.text))
    assert names[17] in [d.id for d in best.documents]
    for s in result.spans:
        for d in s.documents:
            assert all(d.text[a:b].strip() == s.text.strip() for a, b in d.matches)


# ---------------------------------------------------------------------------------------------- CLI and bench
def _main(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from attrilens.cli.app import main

    monkeypatch.setattr(sys, "argv", ["attrilens", *argv])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_build_and_trace_end_to_end_and_bad_input(tmp_path, monkeypatch, capsys):
    docs, rng = _corpus(8, n_docs=30)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    model, out = str(demo_model_dir("target")), str(tmp_path / "idx")
    code, stdout, err = _main(["index", "build", "--method", "verbatim", "--model", model, "--corpus", str(corpus),
                               "--out", out, "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "verbatim" and summary["documents"] == 30
    phrase = " ".join(docs[4]["text"].split(" ")[2:14])
    code, stdout, err = _main(["trace", "--index", out, "--prompt", "Source?", "--target", " " + phrase,
                               "--min-len", "6", "--top-k", "2", "--json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["schema"] == "attrilens/verbatim/v1" and result["spans"]
    assert docs[4]["id"] in [d["id"] for s in result["spans"] for d in s["documents"]]
    assert all(len(s["documents"]) <= 2 for s in result["spans"])

    cases = [
        (["index", "build", "--method", "verbatim", "--model", model, "--corpus", str(corpus), "--out",
          str(tmp_path / "x"), "--proj-dim", "64"], "--proj-dim"),
        (["trace", "--index", out, "--prompt", "p", "--target", " x", "--tokens", "0"], "--tokens"),
        (["trace", "--index", out, "--prompt", "p", "--target", " x", "--faiss"], "--faiss"),
        (["trace", "--index", out, "--prompt", "p", "--target", " x", "--ray", "local"], "--ray"),
        (["trace", "--index", out, "--prompt", "p", "--target", ""], "empty"),
        (["trace", "--index", out, "--prompt", "p", "--target", " x", "--min-len", "0"], "min_len"),
        (["trace", "--index", str(ASSETS / "index"), "--prompt", "p", "--target", " x", "--min-len", "4"],
         "--min-len"),
    ]
    for argv, fragment in cases:
        code, _, err = _main(argv, monkeypatch, capsys)
        lines = [x for x in err.splitlines() if x.startswith("error: ")]
        assert code == 2 and "Traceback" not in err and len(lines) == 1, (argv, err[-1500:])
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())

    import collections

    monkeypatch.setattr(vbuild.shutil, "disk_usage", lambda p: collections.namedtuple("u", "total used free")(1, 1, 10))
    code, _, err = _main(["index", "build", "--method", "verbatim", "--model", model, "--corpus", str(corpus),
                          "--out", str(tmp_path / "small")], monkeypatch, capsys)
    assert code == 2 and [x for x in err.splitlines() if x.startswith("error: ")][0].count("needs about") == 1


def test_quick_benchmark_runs_at_a_tiny_size(tmp_path):
    from attrilens.bench.verbatim import run_benchmark

    report = run_benchmark(sizes=(20_000,), n_responses=3, workdir=tmp_path, progress=False)
    row = report.tables["verbatim"].iloc[0]
    assert row["corpus tokens"] > 15_000 and row["build tokens/s"] > 0 and row["trace p50 s"] > 0
    assert row["engine bytes/token"] >= 2 and row["spans/response"] >= 1
    assert not any(tmp_path.iterdir())  # the temporary indexes are removed
