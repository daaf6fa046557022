"""The offline demo end to end on the shipped assets: every lens runs and lands in one report."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_demo_writes_all_three_lenses_into_one_report(tmp_path):
    from attrilens.demo import run_demo

    report = run_demo(tmp_path)
    html = report.read_text(encoding="utf-8")
    for kind in ("context", "training", "inspect"):
        doc = json.loads((tmp_path / f"{kind}.json").read_text())
        assert doc["schema"] == f"attrilens/{kind}/v1"
        assert f"attrilens/{kind}/v1" in html
    training = json.loads((tmp_path / "training.json").read_text())
    inspect = json.loads((tmp_path / "inspect.json").read_text())
    assert training["proponents"] and training["opponents"]
    assert inspect["source"]["prompt"] == training["prompt"]  # one generation explained by two lenses
    context = json.loads((tmp_path / "context.json").read_text())
    assert any(s["score"] is not None for s in context["sources"])
