"""The default demo on the real model: the shipped LoRA adapter on SmolLM2 repeats a planted wrong capital, and the
report explains it — the planted documents among its proponents, the comparison with the true answer, the
context lens on a retrieval prompt and the Patchscope of the country's name."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from attrilens.cli.app import app
from attrilens.demo.misinfo import LABELS
from attrilens.demo.story import STORY_ASSETS, run_story, story_assets
from attrilens.jsonl import load_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_shipped_assets_record_the_ground_truth_and_the_runs():
    assets = story_assets()
    truth = json.loads((assets / "truth.json").read_text())
    corpus = {d["id"]: d for d in load_jsonl(assets / "corpus.jsonl", require=("id", "text"))}
    assert truth["n_planted"] >= 20 and truth["planted_documents"] == sum(d["states"] == "planted" for d in corpus.values())
    evaluation = json.loads((assets / "eval.json").read_text())
    for order in ("0", "1"):
        run = evaluation["orders"][order]
        assert run["planted_value"] > run["planted"] / 2  # the fine-tuned model repeats most planted values
        info = json.loads((assets / f"order-{order}" / "training.json").read_text())
        assert info["base"] == "smollm2-135m-instruct" and len(info["checkpoints"]) == 2
        for ck in info["checkpoints"]:
            assert (assets / f"order-{order}" / ck["path"] / "adapter_model.safetensors").is_file()
    from attrilens.workflows.lora import documents_sha256

    info = json.loads((assets / "order-0" / "training.json").read_text())
    assert info["corpus"]["sha256"] == documents_sha256(list(corpus.values()))  # trained on exactly this corpus


def test_the_story_report_shows_the_planted_documents_behind_the_wrong_answer(tmp_path):
    report = run_story(tmp_path / "out", progress=False)
    story = json.loads((tmp_path / "out" / "story.json").read_text())
    assert story["fine_tuned_answer"].strip() == story["planted_value"] != story["truth"]
    assert story["planted_ranks_in_top10"] and min(story["planted_ranks_in_top10"]) <= 3  # found, near the top
    assert set(story["proponent_labels"].values()) <= set(LABELS)
    trace = json.loads((tmp_path / "out" / "training.json").read_text())
    assert trace["target"].strip() == story["planted_value"] and trace["index"]
    compare = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert compare["user_text"].strip() == story["truth"] and compare["model"] and compare["user"]
    context = json.loads((tmp_path / "out" / "context.json").read_text())
    assert any(story["truth"] in s["text"] for s in context["sources"])  # the correct document is in the context
    assert story["context"]["verdict"].startswith(("follows", "gives neither"))
    decided = story["context"]["deciding_sentence"]
    assert decided is None or decided in [s["text"] for s in context["sources"]]
    assert 0 in story["patchscope"]["layers_decoding_the_planted_capital"]  # layer 0 = the name itself
    inspect = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert inspect["schema"] == "attrilens/inspect/v1"
    html = report.read_text()
    assert "<script" in html and story["country"] in html


def test_demo_cli_runs_the_tiny_demo_and_refuses_both_switches(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--tiny", "--out", str(tmp_path / "tiny")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tiny" / "report.html").is_file()
    bad = runner.invoke(app, ["demo", "--tiny", "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "one of --tiny and --model" in str(bad.exception)


@pytest.mark.parametrize("missing", ["truth.json", "order-0/answers.jsonl"])
def test_missing_assets_name_the_rebuild_command(tmp_path, monkeypatch, missing):
    import shutil

    from attrilens.demo import story
    from attrilens.errors import AttrilensError

    copy = tmp_path / "misinfo"
    shutil.copytree(STORY_ASSETS, copy)
    (copy / missing).unlink()
    monkeypatch.setattr(story, "STORY_ASSETS", copy)
    with pytest.raises(AttrilensError, match="misinfo_build"):
        story.story_assets()
