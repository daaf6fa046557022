"""The README's Python examples run as written (so the README stays true): the real-model example on SmolLM2,
whose comments claim what each lens finds, and the shipped tiny demo models' example."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[1] / "README.md").read_text(
    encoding="utf-8"), re.S)


def run_block(index: int) -> dict:
    namespace: dict = {}
    exec(compile(BLOCKS[index], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_readme_has_the_real_model_example_first():
    assert len(BLOCKS) >= 2, "the README lost one of its Python examples"
    assert 'LM.from_pretrained("smollm2-135m-instruct")' in BLOCKS[0]


def test_readme_real_model_example_finds_what_its_comments_claim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes its index into the working directory
    ns = run_block(0)
    assert "roof" in ns["result"].response
    scores = ns["result"].to_frame().set_index("text")["score"]
    assert scores.idxmax().startswith("Marta keeps her bees") and scores.max() > 5 * scores.drop(scores.idxmax()).max()
    top = ns["trace"].proponents[0]
    assert top.text == "The capital of France is Paris." and top.score > 5 * abs(ns["trace"].proponents[1].score)
    assert (tmp_path / "smollm2-index" / "manifest.json").exists()
    frame = ns["grid"].to_frame()
    assert (frame["top_token"].str.strip() == "Paris").all() and (frame["source_token"].str.strip() == "France").all()
    assert "Paris" in capsys.readouterr().out


def test_readme_demo_model_example_runs(capsys):
    run_block(1)
    out = capsys.readouterr().out
    assert "Kaper" in out and "proponent" in out and "top_token" in out
