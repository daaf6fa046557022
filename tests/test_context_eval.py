"""Faithfulness metrics against hand-computed values, the benchmark on a tiny model, and the `context` CLI verb."""

from __future__ import annotations

import json
import math
import os

import pytest
from typer.testing import CliRunner

from attrilens.bench.context import (
    default_settings,
    evaluate_episode,
    first_sentence,
    format_table,
    is_correct,
    summarise,
)
from attrilens.errors import AttrilensError
from attrilens.metrics import average_precision, gold_hit, loo_outliers, ranking, spearman
from attrilens.testing import random_context as _random_context
from attrilens.testing import tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_outliers_are_above_mean_plus_two_std():
    scores = [0.1, -0.2, 0.05, 0.0, 0.02, -0.01, 0.03, 0.01, 3.0, -0.05]
    assert loo_outliers(scores) == [8]
    assert loo_outliers([1.0, 1.0, 1.0]) == []
    with pytest.raises(AttrilensError, match="at least two exact LOO scores"):
        loo_outliers([1.0])


def test_average_precision_by_hand():
    assert average_precision([0.9, 0.1, 0.5, 0.2], [0, 2]) == pytest.approx(1.0)
    # relevant at ranks 3 and 4: (1/3 + 2/4) / 2
    assert average_precision([0.1, 0.9, 0.2, 0.5], [0, 2]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # a pruned relevant source ties with the other pruned one at the bottom: precision 2/4 at that threshold
    assert average_precision([0.9, None, 0.5, None], [0, 3]) == pytest.approx((1 + 0.5) / 2)
    assert math.isnan(average_precision([0.3, 0.2], []))


def test_rank_metrics():
    assert spearman([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == pytest.approx(1.0)
    assert spearman([3.0, 2.0, 1.0], [10.0, 20.0, 30.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    assert ranking([0.2, None, 0.7, 0.2]) == [2, 0, 3, 1]
    assert gold_hit([0.2, None, 0.7], 2) == 1.0 and gold_hit([0.2, None, 0.7], 0) == 0.0


def test_benchmark_rows_on_a_tiny_model():
    target, proxy = tiny_lm("llama", seed=31), tiny_lm("llama", seed=32, width=16)
    settings = default_settings(quick=True)
    episode = {"id": "ep-x", "context": random_context(3), "question": "bank?", "answer": "ada", "gold_sentence": 2}
    e = evaluate_episode(target, proxy, episode, settings, batch_size=4)
    rows = e["rows"]
    assert set(rows) == {s.label for s in settings}
    exact, cached = rows["loo (naive, exact)"], rows["cached (exact)"]
    assert exact["spearman"] == pytest.approx(1.0) and (math.isnan(exact["ap"]) or exact["ap"] == pytest.approx(1.0))
    assert cached["max_abs_diff"] <= 1e-4 and cached["tokens"] < exact["tokens"]
    assert rows["proxy-pruning K=3"]["flops"] < exact["flops"]
    summary = summarise([e], settings)
    assert summary[0]["passes_ratio"] == 1.0 and summary[0]["flops_ratio"] == 1.0
    table = format_table(summary)
    assert table.count("\n") == len(summary) + 1 and "| cached (exact) |" in table


def test_answers_are_judged_by_whole_words_in_the_first_sentence():
    assert is_correct(" Kaper", "Kaper") and is_correct("The capital of Kebir is Kaper.", "Kaper")
    assert not is_correct("The capital of Kebir is Kebir.", "Kaper") and not is_correct(" Kapers", "Kaper")
    assert is_correct("It is Sasvir Goser.", "Sasvir Goser")
    assert first_sentence("The capital is Kaper. The money is the Pesvon.") == "The capital is Kaper."
    assert first_sentence(" Kaper") == " Kaper" and first_sentence("Kaper.") == "Kaper."


def test_benchmark_rows_for_several_proxies_and_peers():
    target, proxy = tiny_lm("llama", seed=31), tiny_lm("llama", seed=32, width=16)
    proxies = {"early-exit:1": target.early_exit(1), "small": proxy}
    settings = default_settings(quick=True, proxies=list(proxies), peers=True)
    labels = [s.label for s in settings]
    for p in proxies:
        assert f"proxy-pruning K=3 [{p}]" in labels
    assert "captum FeatureAblation (naive LOO)" in labels and "context-cite package n=16" in labels
    episode = {"id": "ep-y", "context": random_context(4), "question": "bank?", "answer": "ada", "gold_sentence": 1}
    e = evaluate_episode(target, proxies, episode, settings, batch_size=4, response=" ada", gen_seconds=1.0)
    assert e["response"] == " ada" and e["correct"]
    # the package always applies a chat template, which the tiny model has not: skipped, and said so
    assert "chat template" in e["skipped"]["context-cite package n=16"]
    rows = e["rows"]
    assert rows["proxy-pruning K=3 [early-exit:1]"]["flops"] < rows["loo (naive, exact)"]["flops"]
    if "captum FeatureAblation (naive LOO)" in rows:  # captum installed
        assert rows["captum FeatureAblation (naive LOO)"]["max_abs_diff"] <= 1e-4
    summary = summarise([e], settings)
    assert {r["setting"] for r in summary} == set(rows)
    assert all(0 <= r["unsupported"] <= 1 for r in summary if r["setting"].startswith("proxy-pruning"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_lm("llama", seed=41).save_pretrained(path)
    return path


def test_cli_prints_the_json_document(model_dir, tmp_path):
    from attrilens.cli import app

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(random_context(5), encoding="utf-8")
    result = CliRunner().invoke(app, ["context", "--model", str(model_dir), "--context-file", str(ctx),
                                      "--query", "bank?", "--response", " ada", "--method", "hierarchical",
                                      "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "attrilens/context/v1" and doc["method"] == "cached+hierarchical"
    assert len(doc["sources"]) == 6 and any(s["score"] is None for s in doc["sources"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--context-file", "missing.txt"], "does not exist"),
        (["--method", "proxy"], "needs a proxy model"),
        (["--level", "clause"], "Unknown level"),
    ],
)
def test_cli_bad_input_names_the_fix(model_dir, tmp_path, args, message):
    from attrilens.cli import app

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(random_context(6), encoding="utf-8")
    base = ["context", "--model", str(model_dir), "--context-file", str(ctx), "--query", "q?", "--response", " ada"]
    if args[0] == "--context-file":
        args = ["--context-file", str(tmp_path / args[1])]
    result = CliRunner().invoke(app, base + args)
    assert isinstance(result.exception, AttrilensError) and message in str(result.exception)


def test_cli_early_exit_proxy_pruning_reports_faithfulness(model_dir, tmp_path):
    from attrilens.cli import app

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(random_context(7), encoding="utf-8")
    base = ["context", "--model", str(model_dir), "--context-file", str(ctx), "--query", "bank?", "--response", " ada",
            "--method", "proxy-pruning", "--proxy", "early-exit:1", "--top-k", "2"]
    result = CliRunner().invoke(app, [*base, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "cached+proxy-pruning" and len(doc["faithfulness"]["kept_sources"]) >= 2
    assert {"ll_full", "ll_kept", "kept_sources", "supported", "warning"} <= set(doc["faithfulness"])
    table = CliRunner().invoke(app, base)
    assert table.exit_code == 0 and "faithfulness: LL(response | full context)" in table.stderr


def test_cli_warns_when_pruning_removes_the_support(tmp_path):
    from attrilens.bench.context import load_episodes
    from attrilens.cli import app
    from attrilens.demo import paths

    e = load_episodes(paths.demo_world_dir(), 1)[0]
    ctx = tmp_path / "ctx.txt"
    ctx.write_text(e["context"], encoding="utf-8")
    args = ["context", "--model", str(paths.demo_model_dir("target")), "--proxy", str(paths.demo_model_dir("proxy")),
            "--context-file", str(ctx), "--query", e["question"], "--response", f" {e['answer']}",
            "--method", "proxy-pruning", "--top-k", "1"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    warning = json.loads(result.stdout)["faithfulness"]["warning"]
    assert warning and "no longer supports the response" in warning and f"WARNING: {warning}" in result.stderr
    table = CliRunner().invoke(app, args)
    assert "WARNING: The kept context (1 of" in table.stderr and "WARNING" not in table.stdout


def random_context(seed: int, paragraphs: int = 3) -> str:
    return _random_context(seed, paragraphs, sentences=2, words=3)
