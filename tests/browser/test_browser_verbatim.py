"""Verbatim spans in the main view: highlighted at their character offsets, each listing the documents that state it
(the occurrence marked) beside the gradient proponents of the same selection, in the report and in the web app."""

from __future__ import annotations

import json
import re

import pytest

from attrilens.app.server import create_app
from attrilens.view import render_page
from live import LiveServer
from pages import fixture
from pages import open_report as open_any_report
from test_browser_app import FakeLenses

BEFORE = "(el) => { const r = document.createRange(); r.setStart(el.closest('.al-selectable, .al-vdoc-text'), 0);" \
         " r.setEndBefore(el); return r.toString(); }"


def generation_docs(verbatim: dict) -> list[dict]:
    """The fixture generation's training documents moved onto the verbatim fixture's response (same words first), plus a
    precomputed gradient result for the first verbatim span."""
    docs = [dict(d, target=verbatim["target"]) for d in fixture("training.json")]
    first = verbatim["spans"][0]
    span_doc = dict(docs[0], span=[first["start"], first["end"]])
    span_doc["proponents"] = [dict(p, id=f"span0:{p['id']}") for p in docs[0]["proponents"]]
    return docs + [span_doc]


def open_report(watched, tmp_path, docs):
    return open_any_report(watched, tmp_path, docs, wait_for=".al-view-training .al-vspan", title="verbatim report")


def column_ids(page, column: str) -> list[str]:
    return page.locator(f".al-view-training .al-side {column}").first.locator("[data-id]").evaluate_all(
        "els => els.map(e => e.dataset.id)")


def assert_highlighted(page, verbatim):
    target = verbatim["target"]
    for i, sp in enumerate(verbatim["spans"]):
        pieces = page.locator(f'.al-view-training .al-selectable .al-vspan[data-span="{i}"]')
        assert "".join(pieces.all_text_contents()) == sp["text"] == target[sp["start"]:sp["end"]]
        assert pieces.first.evaluate(BEFORE) == target[:sp["start"]], f"span {i} starts at the wrong place"
    assert page.locator(".al-view-training .al-selectable").text_content() == target
    assert page.locator(".al-view-training .al-vchip").count() == len(verbatim["spans"])


def assert_documents(page, span):
    """The stated-in column lists the span's documents in rank order, each occurrence marked where `matches` says."""
    block = page.locator(".al-view-training .al-stated .al-vblock")
    assert block.count() == 1 and block.locator(".al-vquote").text_content() == span["text"]
    assert column_ids(page, ".al-stated") == [d["id"] for d in span["documents"]]
    for d in span["documents"]:
        card = block.locator(".al-vdoc").filter(has=page.locator(".al-id", has_text=re.compile(f"^{re.escape(d['id'])}$")))
        if card.locator("button", has_text="show whole document").count():
            card.locator("button", has_text="show whole document").click()
        assert card.locator(".al-vdoc-text").text_content() == d["text"]
        marks = card.locator(".al-vmark")
        assert marks.count() == len(d["matches"])
        assert card.locator(".al-vcount").text_content() == f"{len(d['matches'])}× here"
        assert f"BM25 {d['score']:.2f}" == card.locator(".al-score").text_content()
        for k, (a, b) in enumerate(d["matches"]):
            mark = marks.nth(k)
            assert mark.text_content() == span["text"] and [int(mark.get_attribute("data-start")), b] == [a, b]
            assert mark.evaluate(BEFORE) == d["text"][:a]


def test_report_highlights_spans_and_shows_stated_in_beside_influenced_by(watched, tmp_path):
    verbatim = fixture("verbatim.json")
    docs = generation_docs(verbatim)
    page = open_report(watched, tmp_path, docs + [verbatim])
    assert page.locator(".al-view-training").count() == 1, "the verbatim result joins its generation's view"
    assert_highlighted(page, verbatim)
    # the whole text: every span in "stated in" (its top documents), the whole text's proponents in "influenced by"
    side = page.locator(".al-view-training .al-side")
    assert "Stated in" in side.locator(".al-stated h3").text_content()
    assert "Influenced by" in side.locator(".al-influenced h3").text_content()
    assert side.locator(".al-vblock").count() == len(verbatim["spans"])
    assert column_ids(page, ".al-influenced") == [p["id"] for p in docs[0]["proponents"]]
    # click the second span (it ends inside the word "Murtin."): the whole span is selected, its documents listed;
    # no gradient result for it in the report, so the whole text's proponents stay, with a note saying so
    span = verbatim["spans"][1]
    page.locator('.al-view-training .al-vspan[data-span="1"]').first.click()
    assert page.locator(".al-view-training .al-tok.al-selected").all_inner_texts() == ["of", "Vokur", "is", "Murtin."]
    active = page.locator(".al-view-training .al-selectable .al-vspan.al-vactive")
    assert "".join(active.all_text_contents()) == span["text"]  # only the picked span's pieces
    assert_documents(page, span)
    assert "No precomputed gradient result" in page.locator(".al-view-training .al-influenced .al-notice").text_content()
    assert column_ids(page, ".al-influenced") == [p["id"] for p in docs[0]["proponents"]]
    # the first span has a precomputed gradient result: both columns are that selection's
    page.locator('.al-view-training .al-vchip[data-span="0"]').click()
    assert_documents(page, verbatim["spans"][0])
    assert column_ids(page, ".al-influenced") == [p["id"] for p in docs[-1]["proponents"]]
    assert page.locator(".al-view-training .al-influenced .al-notice").count() == 0
    # a word outside every span: "stated in" says so; a plain word selection still works as before
    page.locator(".al-view-training .al-tok", has_text="Travellers").click()
    assert "in no verbatim span" in page.locator(".al-view-training .al-stated").text_content()
    page.locator(".al-view-training button", has_text="whole text").click()
    assert page.locator(".al-view-training .al-stated .al-vblock").count() == len(verbatim["spans"])
    assert watched.errors == [] and watched.dialogs == []


def test_report_with_only_a_verbatim_result(watched, tmp_path):
    verbatim = fixture("verbatim.json")
    page = open_report(watched, tmp_path, [verbatim])
    assert_highlighted(page, verbatim)
    assert "no gradient" in page.locator(".al-view-training .al-influenced .al-notice").text_content()
    page.locator('.al-view-training .al-vchip[data-span="3"]').click()
    assert_documents(page, verbatim["spans"][3])
    assert "attrilens serve" in page.locator(".al-view-training .al-influenced .al-notice").text_content()
    empty = dict(verbatim, spans=[], target=" Nothing here is stated anywhere.")
    path = tmp_path / "empty.html"
    path.write_text(render_page([empty]), encoding="utf-8")
    page.goto(path.as_uri())
    page.wait_for_selector(".al-view-training .al-stated")
    assert page.locator(".al-vspan, .al-vchip").count() == 0
    assert "No span of at least 4 tokens" in page.locator(".al-view-training .al-stated").text_content()
    assert watched.errors == [] and watched.dialogs == []


class VerbatimLenses(FakeLenses):
    """The fake lenses plus a verbatim index answering with the fixture (for the fixture's prompt and response)."""

    def __init__(self):
        super().__init__()
        self.verbatims = []

    def verbatim(self, req):
        self.verbatims.append(req)
        doc = fixture("verbatim.json")
        assert (req.prompt, req.target) == (doc["prompt"], doc["target"])
        return doc


def test_web_app_finds_spans_on_request_and_traces_the_picked_span(watched, tmp_path):
    verbatim = fixture("verbatim.json")
    (tmp_path / "training.json").write_text(json.dumps(generation_docs(verbatim)[0]))
    lenses = VerbatimLenses()
    with LiveServer(create_app(lenses, report_dir=tmp_path)) as url:
        page = watched.page
        page.goto(url + "/")
        page.wait_for_selector(".al-view-training .al-example")
        assert page.locator(".al-vspan").count() == 0
        page.locator(".al-view-training button", has_text="find verbatim spans").click()
        page.wait_for_selector(".al-view-training .al-vspan")
        assert [(r.prompt, r.target) for r in lenses.verbatims] == [(verbatim["prompt"], verbatim["target"])]
        assert_highlighted(page, verbatim)
        assert page.locator(".al-view-training button", has_text="find verbatim spans").count() == 0
        # the last span lies after an emoji: the trace request carries Python's (code point) offsets
        span = verbatim["spans"][3]
        page.locator('.al-view-training .al-vspan[data-span="3"]').first.click()
        chosen = verbatim["target"][span["start"]:span["end"]]
        page.wait_for_selector(f'.al-influenced .al-example[data-id="for:{chosen}:0"]')
        assert list(lenses.traces[-1].span) == [span["start"], span["end"]]
        assert_documents(page, span)
        assert column_ids(page, ".al-influenced") == [f"for:{chosen}:{k}" for k in range(3)]
    assert watched.errors == [] and watched.dialogs == []


def test_web_app_without_a_verbatim_index_offers_no_search(watched, tmp_path):
    (tmp_path / "training.json").write_text(json.dumps(fixture("training.json")[0]))
    with LiveServer(create_app(FakeLenses(), report_dir=tmp_path)) as url:
        watched.page.goto(url + "/")
        watched.page.wait_for_selector(".al-view-training .al-example")
        assert watched.page.locator("button", has_text="find verbatim spans").count() == 0
        assert watched.page.locator(".al-side").count() == 0
    assert watched.errors == []


PLANTED = " the seat of government of Vokur lies in the city of Murtin"
HOSTILE_ID = "planted <img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def real_backend(tmp_path_factory):
    """The demo model and a real verbatim index of the demo corpus plus planted documents (no gradient index)."""
    import torch

    from attrilens.app.backend import LensBackend
    from attrilens.demo.paths import demo_model_dir, demo_world_dir
    from attrilens.jsonl import load_jsonl
    from attrilens.lm import LM
    from attrilens.training.verbatim import build_verbatim_index

    torch.set_num_threads(1)
    lm = LM.from_pretrained(demo_model_dir("target"))
    corpus = load_jsonl(demo_world_dir() / "corpus.jsonl", require=())[:300] + [
        {"id": HOSTILE_ID, "text": f"Noise </script><script>alert(2)</script> then:{PLANTED}, they say."}]
    out = tmp_path_factory.mktemp("verbatim") / "index"
    build_verbatim_index(lm, corpus, out, progress=False)
    return LensBackend(None, lm=lm, verbatim_dir=out), corpus[-1]


def test_web_app_on_a_real_verbatim_index(watched, real_backend):
    backend, planted = real_backend
    target = f"{PLANTED}. Nothing else."
    with LiveServer(create_app(backend)) as url:
        page = watched.page
        page.goto(url + "/")
        page.locator(".al-new summary").click()
        page.locator('textarea[aria-label="prompt"]').fill("Question: where does Vokur keep its government?\nAnswer:")
        page.locator('input[aria-label="target (empty: the model generates)"]').fill(target)
        page.locator(".al-new button", has_text="find verbatim spans").click()
        page.wait_for_selector(".al-view-training .al-vspan")
        pieces = page.locator('.al-view-training .al-selectable .al-vspan[data-span="0"]')
        assert "".join(pieces.all_text_contents()) == PLANTED and pieces.first.evaluate(BEFORE) == ""
        pieces.first.click()
        card = page.locator(".al-view-training .al-stated .al-vdoc", has=page.locator(".al-id", has_text=HOSTILE_ID))
        mark = card.locator(".al-vmark")
        at = planted["text"].index(PLANTED)
        assert mark.text_content() == PLANTED and int(mark.get_attribute("data-start")) == at
        assert mark.evaluate(BEFORE) == planted["text"][:at]
        # no gradient index: the "influenced by" column says how to get one, the "stated in" column stays
        page.wait_for_selector(".al-view-training .al-influenced .al-notice-error")
        assert "--index" in page.locator(".al-view-training .al-influenced .al-notice-error").text_content()
        assert page.locator("#attrilens-app img, #attrilens-app script").count() == 0
    assert watched.dialogs == [] and [e for e in watched.errors if "400" not in e] == []


def test_report_of_real_results_shows_each_span_with_its_own_gradient_result(watched, tmp_path, real_backend):
    from attrilens.app.precompute import span_traces
    from attrilens.demo.index import DEMO_INDEX
    from attrilens.training import TrainingIndex
    from attrilens.view.requests import dispatch

    backend, _ = real_backend
    verbatim = dispatch(backend, "verbatim", {"prompt": "Question: where?\nAnswer:", "target": f"{PLANTED}. Nothing else.",
                                              "min_len": 4})
    docs = span_traces(TrainingIndex.open(DEMO_INDEX, backend.lm()), verbatim, top_k=4, progress=False)
    page = open_report(watched, tmp_path, docs + [verbatim])
    assert_highlighted(page, verbatim)
    assert column_ids(page, ".al-influenced") == [p["id"] for p in docs[0]["proponents"]]
    for k, sp in enumerate(verbatim["spans"]):
        page.locator(f'.al-view-training .al-vchip[data-span="{k}"]').click()
        assert_documents(page, sp)
        assert column_ids(page, ".al-influenced") == [p["id"] for p in docs[k + 1]["proponents"]]
        assert page.locator(".al-view-training .al-influenced .al-notice").count() == 0
    assert watched.errors == [] and watched.dialogs == []


def test_malformed_spans_and_matches_are_skipped_not_drawn_wrong(watched, tmp_path):
    verbatim = fixture("verbatim.json")
    good = verbatim["spans"][1]
    doc = dict(good["documents"][1], matches=[[-1, 3], [5, 10**6], [0.5, 2], good["documents"][1]["matches"][0]])
    bad = [dict(good, start=good["start"] + 1),  # overlaps the good span
           dict(good, start=200, end=10**6), dict(good, start=-3), dict(good, start="0", end=5), dict(good, start=9, end=9)]
    page = open_report(watched, tmp_path, [dict(verbatim, spans=[dict(good, documents=[doc])] + bad)])
    assert page.locator(".al-view-training .al-vchip").count() == 1
    assert "".join(page.locator('.al-selectable .al-vspan[data-span="0"]').all_text_contents()) == good["text"]
    page.locator(".al-view-training .al-vchip").click()
    marks = page.locator(".al-view-training .al-stated .al-vmark")
    assert marks.count() == 1 and marks.text_content() == good["text"]
    assert watched.errors == [] and watched.dialogs == []
