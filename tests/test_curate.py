"""The curation loop (`attrilens.workflows.curate`, `attrilens curate`): edit files, the edited corpus, a retrain with the
same settings and seed (bit-for-bit when the corpus is unchanged), the before/after report, and bad input that
writes nothing. A LoRA adapter on the shipped tiny model, trained on a small planted-misinformation corpus."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from attrilens.demo.paths import demo_model_dir
from attrilens.errors import AttrilensError
from attrilens.workflows.curate import (
    SCHEMA,
    CurateReport,
    Edit,
    apply_edit,
    curate,
    read_corpus_rows,
    read_edit,
    read_questions,
    remove_edit,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("countryinfo")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A misinformation corpus (12 facts, 4 planted), a LoRA adapter trained on it, and a grad-dot index of it."""
    from attrilens.demo.misinfo import make_misinfo_dataset
    from attrilens.lm import LM
    from attrilens.training import build_index
    from attrilens.workflows.lora import finetune_lora

    root = tmp_path_factory.mktemp("curate")
    truth = make_misinfo_dataset(root / "data", n_facts=12, n_planted=4)
    corpus = root / "data" / "corpus.jsonl"
    adapter = finetune_lora(demo_model_dir("target"), corpus, root / "lora", epochs=1, batch_size=8, progress=False)
    lm = LM.from_pretrained(adapter).with_chat_template(False)
    build_index(lm, corpus, root / "index", method="grad-dot", proj_dim=32, block_len=64, model_dir=adapter,
                progress=False)
    planted = [d for f in truth["facts"].values() for d in f["planted_documents"]]
    return {"root": root, "corpus": corpus, "bytes": corpus.read_bytes(), "adapter": adapter, "index": root / "index",
            "questions": root / "data" / "questions.jsonl", "planted": planted, "truth": truth}


# ---------------------------------------------------------------------- edit files
def test_read_edit_and_apply_keep_other_fields_and_order(tmp_path):
    docs = [{"id": "a", "text": "one", "k": 1}, {"id": "b", "text": "two", "k": 2}, {"id": "c", "text": "three"}]
    edit = read_edit(_write(tmp_path / "e.jsonl", [{"id": "c", "text": "THREE"}, {"id": "a", "remove": True}]))
    assert edit == Edit(remove=("a",), replace={"c": "THREE"})
    assert apply_edit(docs, edit) == [{"id": "b", "text": "two", "k": 2}, {"id": "c", "text": "THREE"}]
    assert docs[2]["text"] == "three"  # the input is not changed
    assert remove_edit(" a, b ,") == Edit(remove=("a", "b"))
    assert edit.rows() == [{"id": "a", "remove": True}, {"id": "c", "text": "THREE"}]


@pytest.mark.parametrize(("rows", "fragment"), [
    ([{"id": "a", "remove": True}, {"id": "a", "text": "x"}], "more than once"),
    ([{"id": "a", "remove": True, "text": "x"}], "both removes"),
    ([{"id": "a", "text": "  "}], "empty \"text\""),
    ([{"id": "a"}], "changes nothing"),
    ([{"text": "x"}], 'no "id"'),
    ([{"id": "a", "txt": "x"}], "unknown field"),
    ([{"id": "a", "remove": "yes"}], "true or false"),
    ([], "no rows"),
], ids=["duplicate", "both", "empty-text", "no-op", "no-id", "unknown-field", "bad-remove", "empty-file"])
def test_bad_edit_files_are_one_line_errors(tmp_path, rows, fragment):
    with pytest.raises(AttrilensError, match=None) as err:
        read_edit(_write(tmp_path / "e.jsonl", rows))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_ids_and_emptying_the_corpus_are_errors():
    docs = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]
    with pytest.raises(AttrilensError, match="'zz'"):
        apply_edit(docs, Edit(replace={"zz": "x"}))
    with pytest.raises(AttrilensError, match="every document"):
        apply_edit(docs, remove_edit("a,b"))
    with pytest.raises(AttrilensError, match="more than once"):
        remove_edit("a,a")
    with pytest.raises(AttrilensError, match="no document ids"):
        remove_edit(" , ")


def test_corpus_rows_keep_fields_and_get_default_ids(tmp_path):
    rows = read_corpus_rows(_write(tmp_path / "c.jsonl", [{"text": "x", "f": 1}, {"id": "b", "text": "y"}]))
    assert rows == [{"text": "x", "f": 1, "id": "line-1"}, {"id": "b", "text": "y"}]


# ---------------------------------------------------------------------- the loop
def test_curate_removes_planted_documents_retrains_and_reports(world, tmp_path):
    out = tmp_path / "curated"
    report = curate(world["index"], out, remove=world["planted"][:5], questions=world["questions"], top_k=5,
                    progress=False)
    assert world["corpus"].read_bytes() == world["bytes"]  # the original corpus is untouched
    before = read_corpus_rows(world["corpus"])
    after = read_corpus_rows(out / "corpus.jsonl")
    gone = set(world["planted"][:5])
    assert [d for d in before if d["id"] not in gone] == after  # the other documents, fields and order kept
    assert [json.loads(x) for x in (out / "edit.jsonl").read_text().splitlines()] == \
        [{"id": i, "remove": True} for i in world["planted"][:5]]
    old = json.loads((world["adapter"] / "training.json").read_text())
    new = json.loads((out / "model" / "training.json").read_text())
    assert new["config"] == old["config"] and new["base"] == old["base"] and new["config"]["seed"] == 0
    assert new["corpus"]["path"] == str(out.resolve() / "corpus.jsonl") and new["n_documents"] == len(after)
    assert len(new["checkpoints"]) == len(old["checkpoints"])  # keep_checkpoints repeated
    # the new index: same method and options, on the edited corpus, built with the retrained model
    m_old = json.loads((world["index"] / "manifest.json").read_text())
    m_new = json.loads((out / "index" / "manifest.json").read_text())
    assert (m_new["method"], m_new["options"]) == (m_old["method"], m_old["options"])
    assert m_new["model_dir"] == str(out.resolve() / "model") and m_new["corpus"]["n_documents"] == len(after)
    # the report
    d = json.loads((out / "report.json").read_text())
    assert d["schema"] == SCHEMA and not (out / ".incomplete").exists()
    assert len(d["questions"]) == world["truth"]["n_facts"] and d["totals"]["planted_questions"] == 4
    assert {"planted_fixed", "correct_broken", "correct_before", "correct_after"} <= set(d["totals"])
    assert d["edit"]["removed"] == world["planted"][:5] and d["retrain_seconds"] > 0
    for q in d["questions"]:
        assert isinstance(q["answer_before"], str) and isinstance(q["answer_after"], str)
        assert len(q["proponents_before"]) <= 5 and not gone & set(q["proponents_after"])
        assert set(q["edited_proponents"]) == gone & set(q["proponents_before"])
    assert CurateReport.from_json(report.to_json()).to_dict() == report.to_dict() == d
    assert len(report.to_frame()) == len(d["questions"])
    changed = sum(q["answer_after"] != q["answer_before"] for q in d["questions"])
    assert list(d)[:2] == ["schema", "summary"] and d["totals"]["changed"] == changed
    assert d["summary"].startswith(f"re-asked {len(d['questions'])} questions, {changed} changed (from ")
    from attrilens.cli.curate import _summary

    assert _summary(report).splitlines()[0] == d["summary"]  # the terminal report's first line too
    assert all(q["asked_as"] == "plain text" for q in d["questions"])  # the tiny model has no chat template
    page = (out / "report.html").read_text()
    assert "<script" not in page and world["planted"][0] in page


def test_a_no_op_edit_retrains_bit_for_bit(world, tmp_path):
    """The same corpus, seed and settings give the same adapter: the retrain is deterministic on CPU."""
    from safetensors.torch import load_file

    doc = read_corpus_rows(world["corpus"])[3]
    edit = _write(tmp_path / "same.jsonl", [{"id": doc["id"], "text": doc["text"]}])
    out = tmp_path / "same"
    report = curate(world["adapter"], out, edit=edit, progress=False)
    assert (out / "corpus.jsonl").read_bytes() == world["bytes"] and report.edit["unchanged"] == [doc["id"]]
    old, new = load_file(world["adapter"] / "adapter_model.safetensors"), load_file(out / "model" /
                                                                                    "adapter_model.safetensors")
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    a = json.loads((world["adapter"] / "training.json").read_text())
    b = json.loads((out / "model" / "training.json").read_text())
    for info in (a, b):
        for measured in ("wall_seconds", "seconds_per_epoch", "peak_rss_mb"):  # timing and memory, not results
            info.pop(measured)
        info["corpus"].pop("path")
    assert a == b  # config, seed, optimizer, checkpoints, loss curve and corpus hash all equal
    # no --questions: the questions.jsonl beside the corpus are re-asked, and the identical model changes none
    assert report.paths["index"] is None and report.totals["questions"] == world["truth"]["n_facts"]
    assert report.source["questions"] == [str(world["questions"])]
    assert report.summary == f"re-asked {world['truth']['n_facts']} questions, 0 changed (from {world['questions']})"
    assert report.totals["changed"] == 0 and report.to_dict()["summary"] == report.summary


# ---------------------------------------------------------------------- bad input
def _bad_cases(world, tmp_path):
    other = _write(tmp_path / "other.jsonl", read_corpus_rows(world["corpus"])[:-1])
    unknown = _write(tmp_path / "unknown.jsonl", [{"id": "no-such-doc", "text": "x"}])
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    return [
        ("remove-unknown", dict(remove="no-such-doc"), "not in the corpus", None),
        ("edit-unknown", dict(edit=unknown), "not in the corpus", None),
        ("base-other-model", dict(remove=world["planted"][0], base=str(demo_model_dir("proxy"))), "trained on", None),
        ("base-registered-name", dict(remove=world["planted"][0], base="smollm2-135m-instruct"), "trained on", None),
        ("other-corpus", dict(remove=world["planted"][0], corpus=other), "not the corpus", None),
        ("both", dict(remove=world["planted"][0], edit=unknown), "exactly one", None),
        ("out-not-empty", dict(remove=world["planted"][0]), "not empty", full),
    ]


CASE_IDS = ["remove-unknown", "edit-unknown", "base-other-model", "base-registered-name", "other-corpus", "both",
            "out-not-empty"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_raises_and_writes_nothing(world, tmp_path, case):
    _, kwargs, fragment, out = next(c for c in _bad_cases(world, tmp_path) if c[0] == case)
    out = out or tmp_path / "out"
    listing = sorted(os.listdir(out)) if out.exists() else None
    with pytest.raises(AttrilensError) as err:
        curate(world["index"], out, questions=world["questions"], progress=False, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert (sorted(os.listdir(out)) if out.exists() else None) == listing  # nothing written
    assert world["corpus"].read_bytes() == world["bytes"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_cli_bad_input_is_one_line_and_exit_2(world, tmp_path, case, monkeypatch, capsys):
    from attrilens.cli.app import main

    _, kwargs, fragment, out = next(c for c in _bad_cases(world, tmp_path) if c[0] == case)
    out = out or tmp_path / "out"
    argv = ["attrilens", "curate", "--index", str(world["index"]), "--out", str(out)]
    for key, value in kwargs.items():
        argv += [f"--{key}", str(value)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_needs_one_source(tmp_path, monkeypatch, capsys):
    from attrilens.cli.app import main

    monkeypatch.setattr(sys, "argv", ["attrilens", "curate", "--out", str(tmp_path / "o"), "--remove", "a"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "--index" in capsys.readouterr().err


def test_cli_curate_prints_json(world, tmp_path, monkeypatch, capsys):
    from attrilens.cli.app import main

    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["attrilens", "curate", "--model", str(world["adapter"]), "--out", str(out),
                                      "--remove", world["planted"][1], "--questions", str(world["questions"]),
                                      "--json"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema"] == SCHEMA and d["edit"]["removed"] == [world["planted"][1]]
    assert d["paths"]["index"] is None and (out / "report.json").is_file()
    assert all(q["proponents_before"] is None for q in d["questions"])


def test_without_retrain_only_the_edit_and_the_answers_before(world, tmp_path):
    out = tmp_path / "dry"
    report = curate(world["index"], out, remove=world["planted"][2], questions=world["questions"], retrain=False,
                    top_k=3, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "edit.jsonl", "report.html", "report.json"]
    assert report.retrain_seconds is None and report.paths["model"] is None and "planted_fixed" not in report.totals
    assert all(q["answer_after"] is None and len(q["proponents_before"]) <= 3 for q in report.questions)
    (out / "report.json").unlink()
    (out / ".incomplete").write_text("")  # what an interrupted run leaves
    with pytest.raises(AttrilensError, match="unfinished curate run"):
        curate(world["index"], out, remove=world["planted"][2], progress=False)


def test_report_html_escapes_every_text():
    bad = "</td><script>alert(1)</script>"
    q = {"id": bad, "prompt": bad, "truth": bad, "wrong": None, "answer_before": bad, "answer_after": bad,
         "correct_before": False, "correct_after": True, "planted_before": None, "planted_after": None,
         "proponents_before": [bad], "proponents_after": None, "trace_error_after": bad}
    report = CurateReport(source={"adapter": bad, "index": None, "base": bad, "corpus": bad, "method": None},
                          edit={"removed": [bad], "edited": [], "unchanged": [], "n_documents_before": 2,
                                "n_documents_after": 1},
                          questions=[q], totals={"questions": 1}, paths={"corpus": bad, "model": bad},
                          settings={"seed": 0}, retrain_seconds=1.0)
    page = report.to_html()
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    assert CurateReport.from_json(report.to_json()) == report


# ---------------------------------------------------------------------- what is re-asked without --questions
def _corpus_alone(world, tmp_path):
    """The corpus copied to a folder without questions.jsonl (the same documents: the adapter's hash holds)."""
    (tmp_path / "alone").mkdir()
    path = tmp_path / "alone" / "corpus.jsonl"
    path.write_bytes(world["bytes"])
    return path


def test_no_questions_anywhere_is_refused_before_any_work(world, tmp_path, monkeypatch, capsys):
    import attrilens.workflows.curate.run as curate_run
    import attrilens.workflows.lora as lora
    from attrilens.cli.app import main

    def no_training(*args, **kwargs):
        raise AssertionError("curate retrained although it had nothing to re-ask")

    monkeypatch.setattr(lora, "finetune_lora", no_training)
    monkeypatch.setattr(curate_run, "_load_old", no_training)  # not even the model is loaded
    corpus = _corpus_alone(world, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(AttrilensError) as err:
        curate(world["adapter"], out, remove=world["planted"][0], corpus=corpus, progress=False)
    assert "--questions" in str(err.value) and "\n" not in str(err.value) and not out.exists()
    monkeypatch.setattr(sys, "argv", ["attrilens", "curate", "--model", str(world["adapter"]), "--out", str(out),
                                      "--remove", world["planted"][0], "--corpus", str(corpus)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert stop.value.code == 2 and len(lines) == 1 and "--questions" in lines[0] and not out.exists(), err[-2000:]


def test_the_prompts_the_index_was_traced_with_are_re_asked(world, tmp_path):
    import shutil

    from attrilens.lm import LM
    from attrilens.training import TrainingIndex
    from attrilens.training.traced import record_trace
    from attrilens.workflows.curate import find_questions, read_training_info

    index = tmp_path / "index"
    shutil.copytree(world["index"], index)
    lm = LM.from_pretrained(world["adapter"]).with_chat_template(False)
    prompts = [q["prompt"] for q in read_questions(world["questions"])[:2]]
    opened = TrainingIndex.open(index, lm)
    for prompt in prompts:
        assert record_trace(index, opened.trace(prompt, generate=True, max_new_tokens=4, top_k=2))
    corpus = _corpus_alone(world, tmp_path)
    found, sources = find_questions(None, world["adapter"], corpus, index, read_training_info(world["adapter"]))
    assert [q["prompt"] for q in found] == prompts and sources == [str(index / "traced.jsonl")]
    assert all(q["id"].startswith("traced-") and q["chat_template"] is False for q in found)  # generated plain
    # beside a corpus with questions.jsonl, those come first and a traced prompt already there is not asked twice
    both, sources = find_questions(None, world["adapter"], world["corpus"], index,
                                   read_training_info(world["adapter"]))
    assert len(both) == world["truth"]["n_facts"] and sources == [str(world["questions"]), str(index / "traced.jsonl")]
    report = curate(index, tmp_path / "dry", remove=world["planted"][0], corpus=corpus, retrain=False, top_k=2,
                    progress=False)
    assert [q["prompt"] for q in report.questions] == prompts
    assert report.summary == f"asked 2 questions (no retrain: nothing re-asked) (from {index / 'traced.jsonl'})"


def test_a_parquet_corpus_with_other_field_names_is_read_as_it_was_trained(world, tmp_path):
    """The adapter's training.json records the fields its corpus was read with; curate reads it the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.lora import finetune_lora

    rows = load_jsonl(world["corpus"])
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist([{"doc": r["id"], "body": r["text"]} for r in rows]), corpus)
    adapter = finetune_lora(demo_model_dir("target"), corpus, tmp_path / "lora", epochs=1, max_steps=2,
                            progress=False, text_field="body", id_field="doc")
    info = json.loads((adapter / "training.json").read_text())
    assert (info["corpus"]["text_field"], info["corpus"]["id_field"]) == ("body", "doc")
    report = curate(adapter, tmp_path / "cur", remove=world["planted"][0], questions=world["questions"],
                    retrain=False, reindex=False, top_k=2, progress=False)
    edited = load_jsonl(tmp_path / "cur" / "corpus.jsonl")
    assert [r["id"] for r in edited] == [r["id"] for r in rows if r["id"] != world["planted"][0]]
    assert report.questions and edited[0]["text"] == next(r["text"] for r in rows if r["id"] == edited[0]["id"])
