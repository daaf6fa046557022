"""Corpora in the formats users hold (attrilens.corpus_formats): JSONL, Parquet, a `datasets` folder, text files;
--text-field / --id-field; streamed reading and a streamed index build in bounded memory."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from attrilens.corpus_formats import corpus_format, iter_document_batches, iter_documents
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.testing import tiny_lm
from attrilens.training import build as build_mod
from attrilens.training import corpus as corpus_mod
from attrilens.training import index as index_mod
from attrilens.training.corpus import Corpus, CorpusFile, make_corpus, read_documents
from attrilens.training.index import TrainingIndex, build_index

torch.set_num_threads(1)
WORDS = "the capital of velmora is quenth and its currency the lumen was founded by ada in old zorvia".split()


def _docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"doc-{k}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 40))))} for k in range(n)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def _hf(path, rows):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_lm("llama", seed=3).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def lm(model_dir):
    return LM.from_pretrained(model_dir)


# ---------------------------------------------------------------------- formats
def test_every_format_yields_the_same_documents(tmp_path):
    docs = _docs(23)
    (tmp_path / "shards").mkdir()
    _parquet(tmp_path / "shards" / "a.parquet", docs[:10])
    _parquet(tmp_path / "shards" / "b.parquet", docs[10:])
    paths = {"jsonl": _jsonl(tmp_path / "c.jsonl", docs), "parquet": _parquet(tmp_path / "c.parquet", docs, 4),
             "datasets": _hf(tmp_path / "hf", docs), "parquet-dir": tmp_path / "shards"}
    for kind, path in paths.items():
        assert corpus_format(path) == kind
        assert read_documents(path) == docs, kind
        assert [len(b) for b in iter_document_batches(path, batch_rows=5)] == [5, 5, 5, 5, 3], kind
    # the same texts as paragraphs of one text file (ids FILE:LINE) and as one file each (ids: relative paths)
    (tmp_path / "c.txt").write_text("\n\n".join(d["text"] for d in docs) + "\n")
    assert corpus_format(tmp_path / "c.txt") == "text"
    got = read_documents(tmp_path / "c.txt")
    assert [d["text"] for d in got] == [d["text"] for d in docs]
    assert [d["id"] for d in got] == [f"c.txt:{2 * k + 1}" for k in range(len(docs))]
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for k, d in enumerate(docs[:3]):
        (folder / ("sub" if k == 2 else "") / f"{d['id']}.md").write_text(d["text"])
    (folder / "notes.bin").write_bytes(b"\xff\x00 not a text file")  # not a text suffix: skipped
    assert corpus_format(folder) == "text-dir"
    assert read_documents(folder) == [{"id": "doc-0.md", "text": docs[0]["text"]},
                                      {"id": "doc-1.md", "text": docs[1]["text"]},
                                      {"id": "sub/doc-2.md", "text": docs[2]["text"]}]


def test_paragraphs_keep_their_lines_and_start_line(tmp_path):
    (tmp_path / "notes.txt").write_text("first line\nsecond line\n\n\n  \nthird para\n")
    assert read_documents(tmp_path / "notes.txt") == [{"id": "notes.txt:1", "text": "first line\nsecond line"},
                                                      {"id": "notes.txt:6", "text": "third para"}]


def test_text_and_id_fields_and_positional_ids(tmp_path):
    docs = _docs(7)
    rows = [{"uid": d["id"], "body": d["text"], "lang": "xx"} for d in docs]
    want = [{"id": d["id"], "text": d["text"]} for d in docs]
    paths = [_jsonl(tmp_path / "c.jsonl", rows), _parquet(tmp_path / "c.parquet", rows), _hf(tmp_path / "hf", rows)]
    for path in paths:
        assert read_documents(path, text_field="body", id_field="uid") == want, path
        # no "id" field: positional ids, the same in every format
        assert [d["id"] for d in read_documents(path, text_field="body")] == [f"line-{k}" for k in range(1, 8)]
        # the text field may name a field called anything, the id too
        assert read_documents(path, text_field="lang", id_field="uid")[0] == {"id": "doc-0", "text": "xx"}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets"])
def test_a_missing_field_names_the_fields_there_are(tmp_path, kind):
    rows = [{"uid": "a", "body": "some text"}]
    path = {"jsonl": _jsonl, "parquet": _parquet, "datasets": _hf}[kind](tmp_path / f"c.{kind}", rows)
    with pytest.raises(AttrilensError, match=r'"text".*uid, body.*--text-field') as exc:
        read_documents(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(AttrilensError, match=r'"key".*uid, body.*--id-field'):
        read_documents(path, text_field="body", id_field="key")


def test_a_duplicate_id_is_refused_with_its_line_or_row(tmp_path):
    rows = [{"id": f"d{k}", "text": f"text {k}"} for k in range(5)] + [{"id": "d1", "text": "again"}]
    with pytest.raises(AttrilensError, match=r"c.jsonl:6: document id 'd1' occurs twice"):
        read_documents(_jsonl(tmp_path / "c.jsonl", rows))
    # across batches and files: the ids seen are kept for the whole corpus
    with pytest.raises(AttrilensError, match=r"c.parquet: row 6: document id 'd1' occurs twice"):
        list(iter_documents(_parquet(tmp_path / "c.parquet", rows, 2), batch_rows=2))
    (tmp_path / "dir").mkdir()
    _parquet(tmp_path / "dir" / "1.parquet", rows[:3])
    _parquet(tmp_path / "dir" / "2.parquet", rows[3:])
    with pytest.raises(AttrilensError, match=r"2.parquet: row 3: document id 'd1' occurs twice"):
        read_documents(tmp_path / "dir")
    with pytest.raises(AttrilensError, match=r"c2.jsonl:2 has no text"):
        read_documents(_jsonl(tmp_path / "c2.jsonl", [{"text": "fine"}, {"text": " "}]))


def test_unknown_formats_and_dataset_dicts_are_errors_naming_what_to_pass(tmp_path):
    (tmp_path / "c.csv").write_text("id,text\n")
    with pytest.raises(AttrilensError, match=r"Cannot tell the format .*\.jsonl file, a \.parquet file"):
        read_documents(tmp_path / "c.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttrilensError, match="holds no corpus files"):
        read_documents(tmp_path / "empty")
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_docs(2))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(AttrilensError, match=r"DatasetDict \(splits: train\). Pass one split's folder"):
        read_documents(tmp_path / "dd")
    (tmp_path / "arr.json").write_text(json.dumps(_docs(2)))
    with pytest.raises(AttrilensError, match="is a JSON array, not JSON lines"):
        read_documents(tmp_path / "arr.json")


# ---------------------------------------------------------------------- streaming
def test_parquet_is_read_in_record_batches_never_whole(tmp_path, monkeypatch):
    path = _parquet(tmp_path / "c.parquet", _docs(100), row_group_size=10)
    sizes = []
    real = pq.ParquetFile.iter_batches

    def spy(self, batch_size=65536, **kw):
        for rb in real(self, batch_size=batch_size, **kw):
            sizes.append(rb.num_rows)
            yield rb

    def forbidden(*a, **k):
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq, "read_table", forbidden)
    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    batches = iter_document_batches(path, batch_rows=8)
    first = next(batches)
    assert len(first) == 8 and sizes == [8]  # lazily: one record batch read for the first documents
    assert sum(len(b) for b in batches) == 92 and max(sizes) <= 8 and sum(sizes) == 100


def test_streamed_build_writes_the_in_memory_corpus_and_features_shard_by_shard(tmp_path, lm, monkeypatch):
    docs = _docs(40, seed=1)
    path = _parquet(tmp_path / "c.parquet", docs, row_group_size=7)
    monkeypatch.setattr(corpus_mod, "ROW_GROUP_ROWS", 8)  # several row groups in corpus.parquet
    monkeypatch.setattr(index_mod, "make_corpus", lambda *a, **k: pytest.fail("the corpus was cut in memory"))
    kw = {"method": "grad-dot", "proj_dim": 64, "shard_size": 16, "progress": False, "block_len": 16}
    streamed = build_index(lm, path, tmp_path / "streamed", **kw)
    monkeypatch.undo()
    memory = build_index(lm, make_corpus(docs, lm.tokenizer, block_len=16), tmp_path / "memory", **kw)
    on_disk = Corpus.from_parquet(tmp_path / "streamed" / "corpus.parquet")
    want = make_corpus(read_documents(path), lm.tokenizer, block_len=16)
    assert on_disk == want and len(want) > 40  # documents of several blocks
    assert pq.ParquetFile(tmp_path / "streamed" / "corpus.parquet").metadata.num_row_groups == -(-len(want) // 8)
    assert streamed.manifest["corpus"] == memory.manifest["corpus"]
    assert len(streamed.manifest["shards"]) == -(-len(want) // 16) > 2
    for a, b in zip(streamed.manifest["shards"], memory.manifest["shards"], strict=True):
        assert a["sha256"] == b["sha256"]
    q = streamed.trace("the capital of velmora", " quenth", top_k=3)
    assert [h.id for h in q.proponents] == [h.id for h in memory.trace("the capital of velmora", " quenth",
                                                                         top_k=3).proponents]
    # opened against the corpus path: fingerprinted without tokenising
    TrainingIndex.open(tmp_path / "streamed", lm, corpus=path)


def test_a_resumed_build_reuses_its_corpus_file_and_refuses_another_corpus(tmp_path, lm, monkeypatch):
    docs = _docs(12, seed=2)
    path = _jsonl(tmp_path / "c.jsonl", docs)
    kw = {"method": "grad-dot", "proj_dim": 64, "shard_size": 8, "progress": False, "block_len": 16}
    calls = []
    real = corpus_mod.write_corpus

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(index_mod, "write_corpus", counted)
    boom = {"n": 0}
    real_save = build_mod.write_shards

    def dies_after_one(out, records, folder, n_rows, shard_size, make, **k):
        def make_once(rows, advance):
            boom["n"] += 1
            if boom["n"] == 2:
                raise KeyboardInterrupt
            return make(rows, advance)
        return real_save(out, records, folder, n_rows, shard_size, make_once, **k)

    monkeypatch.setattr(build_mod, "write_shards", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        build_index(lm, path, tmp_path / "o", **kw)
    idx = build_index(lm, path, tmp_path / "o", **kw)
    assert len(calls) == 1 and idx.manifest["complete"]  # the corpus was tokenised once, the build resumed
    _jsonl(path, docs[:-1])
    with pytest.raises(AttrilensError, match=r"different settings \(corpus\)"):
        build_index(lm, path, tmp_path / "o", **kw)
    assert len(calls) == 1  # refused before tokenising


def test_corpus_file_reads_rows_a_row_group_at_a_time(tmp_path, lm, monkeypatch):
    monkeypatch.setattr(corpus_mod, "ROW_GROUP_ROWS", 5)
    docs = _docs(9, seed=4)
    c = make_corpus(docs, lm.tokenizer, block_len=8)
    from attrilens.training.corpus import document_batches, documents_fingerprint, write_corpus

    fp, n = documents_fingerprint(document_batches(docs, batch_rows=2), 8)
    assert fp == c.fingerprint and n == 9
    write_corpus(document_batches(docs, batch_rows=2), lm.tokenizer, tmp_path / "c.parquet", block_len=8,
                 fingerprint=fp, n_documents=n)
    f = CorpusFile(tmp_path / "c.parquet")
    assert len(f) == len(c) and f.n_documents == 9 and f.fingerprint == c.fingerprint
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **k: reads.append(g) or real(self, g, **k))
    assert [f.tokens[i] for i in range(len(f))] == c.tokens
    assert reads == list(range(-(-len(c) // 5)))  # each row group once, in order
    assert [f.block_id(i) for i in range(len(f))] == [c.block_id(i) for i in range(len(c))]
    assert f.neighbours(1) == c.neighbours(1) and f.load() == c
    with pytest.raises(AttrilensError, match="changed while it was being read"):
        write_corpus(document_batches(docs[:-1]), lm.tokenizer, tmp_path / "d.parquet", block_len=8,
                     fingerprint=fp, n_documents=n)
    assert not (tmp_path / "d.parquet").exists() and not (tmp_path / "d.parquet.tmp").exists()


# ---------------------------------------------------------------------- CLI
def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    from attrilens.cli.app import main

    monkeypatch.setattr(sys, "argv", ["attrilens", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def _one_error_line(code: int, err: str, *fragments: str) -> None:
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_index_build_takes_text_and_id_fields(tmp_path, model_dir, monkeypatch, capsys):
    rows = [{"uid": d["id"], "body": d["text"]} for d in _docs(10, seed=5)]
    path = _parquet(tmp_path / "c.parquet", rows)
    base = ["index", "build", "--model", str(model_dir), "--corpus", str(path), "--method", "grad-dot",
            "--proj-dim", "64", "--block-len", "16", "--json"]
    code, out, err = _main(monkeypatch, capsys, *base, "--out", str(tmp_path / "o"), "--text-field", "body",
                           "--id-field", "uid")
    assert code == 0, err[-2000:]
    assert json.loads(out)["method"] == "grad-dot"
    assert {d for d in Corpus.from_parquet(tmp_path / "o" / "corpus.parquet").docs} == {r["uid"] for r in rows}
    code, _, err = _main(monkeypatch, capsys, *base, "--out", str(tmp_path / "bad"))
    _one_error_line(code, err, '"text" does not exist', "uid, body", "--text-field")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    code, _, err = _main(monkeypatch, capsys, *base, "--out", str(tmp_path / "bad"), "--text-field", "body",
                         "--id-field", "key")
    _one_error_line(code, err, '"key" does not exist', "uid, body", "--id-field")


def test_cli_train_takes_text_and_id_fields(tmp_path, monkeypatch, capsys):
    from attrilens.workflows.trainer import _comparable

    rows = [{"uid": d["id"], "body": d["text"]} for d in _docs(6, seed=6)]
    path = _parquet(tmp_path / "c.parquet", rows)
    code, _, err = _main(monkeypatch, capsys, "train", "--corpus", str(path), "--out", str(tmp_path / "m"),
                         "--layers", "1", "--width", "32", "--epochs", "1", "--text-field", "body", "--id-field", "uid")
    assert code == 0, err[-2000:]
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert info["data_order"]["document_ids"] == [r["uid"] for r in rows]
    assert info["config"]["text_field"] == "body"
    # configs saved before the fields existed compare equal to ones at the defaults
    assert _comparable({"seed": 0, "text_field": "text", "id_field": "id"}) == _comparable({"seed": 0})
    code, _, err = _main(monkeypatch, capsys, "train", "--corpus", str(path), "--out", str(tmp_path / "m2"),
                         "--epochs", "1")
    _one_error_line(code, err, '"text" does not exist', "uid, body", "--text-field")


def test_lora_reads_any_format_with_fields(tmp_path):
    from attrilens.workflows.lora import documents_sha256, finetune_lora

    tiny_lm("llama").save_pretrained(tmp_path / "base")
    rows = [{"uid": f"d{i}", "body": f"the capital of velmora is quenth {i}"} for i in range(4)]
    out = finetune_lora(tmp_path / "base", _hf(tmp_path / "hf", rows), tmp_path / "ft", epochs=1, batch_size=2,
                        seq_len=32, progress=False, text_field="body", id_field="uid")
    info = json.loads((out / "training.json").read_text())
    assert info["corpus"]["sha256"] == documents_sha256([{"id": r["uid"], "text": r["body"]} for r in rows])


def test_curate_reads_the_corpus_in_any_format_with_fields(tmp_path):
    from attrilens.workflows.curate import read_corpus_rows

    rows = [{"uid": "a", "body": "first text", "lang": "en"}, {"uid": None, "body": "second text", "lang": "fr"}]
    assert read_corpus_rows(_jsonl(tmp_path / "c.jsonl", rows), text_field="body", id_field="uid") == [
        {"lang": "en", "id": "a", "text": "first text"}, {"lang": "fr", "id": "line-2", "text": "second text"}]
    assert read_corpus_rows(_parquet(tmp_path / "c.parquet", rows), text_field="body", id_field="uid") == [
        {"id": "a", "text": "first text"}, {"id": "line-2", "text": "second text"}]
    with pytest.raises(AttrilensError, match='"body".*uid, text'):
        read_corpus_rows(_jsonl(tmp_path / "d.jsonl", [{"uid": "a", "text": "x"}]), text_field="body")
