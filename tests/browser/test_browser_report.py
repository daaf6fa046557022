"""The static report (opened from disk, no server): all three lenses render, selections use precomputed results."""

from __future__ import annotations

import re

from pages import fixture, open_report, report_documents


def test_report_renders_context_training_and_inspect(watched, tmp_path):
    page = open_report(watched, tmp_path, report_documents())
    ctx, training, inspect = fixture("context.json"), fixture("training.json"), fixture("inspect.json")
    for view in ("training", "compare", "context", "inspect"):
        assert page.locator(f".al-view-{view}").is_visible()
    # context heat map: one shaded span per source, the pruned paragraph hatched, numbers on hover
    assert page.locator(".al-view-context .al-src").count() == len(ctx["sources"])
    assert page.locator(".al-view-context .al-src.al-pruned").count() == 1
    gold = page.locator('.al-src[data-index="5"]')
    assert "LOO score 2.3100" in gold.get_attribute("title")
    assert gold.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(178, 24, 43)"  # the strongest red
    gold.hover()
    assert "source #5" in page.locator(".al-hoverinfo").inner_text()
    assert page.locator(".al-view-context .al-legend").is_visible()
    # training examples for the whole text, then for a clicked token (its precomputed document)
    whole = training[0]
    first = page.locator(".al-view-training .al-example").first
    assert first.get_attribute("data-id") == whole["proponents"][0]["id"]
    word = next(d for d in training if d.get("span") and d["target"][d["span"][0]:d["span"][1]] == "Vokur")
    page.locator(".al-view-training .al-tok", has_text=re.compile("^Vokur$")).click()
    ids = page.locator(".al-view-training .al-examples").first.locator(".al-example").evaluate_all(
        "els => els.map(e => e.dataset.id)")
    assert ids == [p["id"] for p in word["proponents"]]
    assert page.locator(".al-view-training .al-chip").count() == 10
    assert page.locator(".al-view-training .al-hist rect").count() == 12
    # inspect grid: a cell per (layer, position); click one for its top-k and generation; arrows move focus
    cells = page.locator(".al-view-inspect .al-cell")
    assert cells.count() == len(inspect["cells"])
    cell = page.locator('.al-cell[data-layer="2"][data-position="4"]')
    cell.click()
    want = next(c for c in inspect["cells"] if c["layer"] == 2 and c["position"] == 4)
    assert page.locator(".al-topk tbody tr").count() == len(want["top_tokens"])
    assert page.locator(".al-generation").inner_text() == want["generation"]
    cell.press("ArrowUp")
    assert page.evaluate("document.activeElement.dataset.layer") == "3"
    page.keyboard.press("Enter")
    assert "Layer 3, position 4" in page.locator(".al-cell-detail h3").inner_text()
    assert watched.errors == [] and watched.dialogs == []


def test_report_without_precomputed_selection_explains_how_to_compute(watched, tmp_path):
    page = open_report(watched, tmp_path, report_documents()[:1] + [fixture("inspect.json")])
    page.locator(".al-view-training .al-tok", has_text="seat").click()
    assert "attrilens serve" in page.locator(".al-view-training .al-notice").inner_text()
    page.locator(".al-view-training button", has_text="whole text").click()
    assert page.locator(".al-view-training .al-example").count() > 0
    assert watched.errors == []


def test_report_comparison_shows_both_texts_and_the_word_diff(watched, tmp_path):
    page = open_report(watched, tmp_path, [fixture("compare.json"), fixture("inspect.json")])
    view = page.locator(".al-view-compare")
    assert view.locator(".al-compare-model").inner_text().endswith("The seat of government of Vokur is Murtin.")
    assert view.locator(".al-compare-user").inner_text().endswith("The seat of government of Vokur is Reve.")
    assert view.locator("del").all_inner_texts() == ["Murtin."] and view.locator("ins").all_inner_texts() == ["Reve."]
    assert view.locator(".al-col").nth(0).locator(".al-example").count() == 4
    assert view.locator(".al-col").nth(1).locator(".al-example").count() == 4
    assert watched.errors == []


def test_report_says_when_context_scores_are_approximate_or_unfaithful(watched, tmp_path):
    doc = fixture("context.json")
    doc["approximation"] = "knockout: each source is hidden <b>from</b> the response's attention"
    doc["faithfulness"] = {**(doc.get("faithfulness") or {}), "warning": "the kept context <i>no longer</i> supports it"}
    page = open_report(watched, tmp_path, [doc, fixture("inspect.json")])
    notes = page.locator(".al-view-context .al-notice").all_inner_texts()
    assert any(n.startswith("Approximate scores — knockout: each source is hidden <b>from</b>") for n in notes)
    assert any(n.startswith("Unfaithful: the kept context <i>no longer</i>") for n in notes)  # shown as text
    assert page.locator(".al-view-context .al-notice b, .al-view-context .al-notice i").count() == 0
    doc.pop("approximation")
    doc["faithfulness"]["warning"] = None
    page = open_report(watched, tmp_path, [doc, fixture("inspect.json")])
    assert page.locator(".al-view-context .al-notice").count() == 0
    assert watched.errors == []
