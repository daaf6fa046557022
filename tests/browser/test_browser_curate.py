"""Curation in the view: mark training documents to remove or edit from the proponents/opponents lists, then export
edit.jsonl and the `attrilens curate` command (static report and web app; no server round trip needed)."""

from __future__ import annotations

import json
import re

from attrilens.app.server import create_app
from live import LiveServer
from pages import fixture, open_report
from test_browser_app import FakeLenses

XSS_ID = "<img src=x onerror=alert(1)>"
XSS_TEXT = "</script><script>alert(2)</script>"


def _download(page) -> list[dict]:
    with page.expect_download() as info:
        page.locator(".al-curate-download").click()
    text = open(info.value.path(), encoding="utf-8").read()
    return [json.loads(line) for line in text.splitlines()]


def test_mark_remove_and_edit_then_export_in_the_static_report(watched, tmp_path):
    training = fixture("training.json")
    page = open_report(watched, tmp_path, training, wait_for=".al-view-training .al-example")
    panel = page.locator(".al-curate-panel")
    assert "nothing marked yet" in panel.inner_text() and page.locator(".al-curate-download").is_disabled()
    pro = training[0]["proponents"]
    cards = page.locator(".al-view-training .al-examples").first.locator(".al-example")
    cards.nth(0).locator(".al-curate-remove").click()
    cards.nth(1).locator(".al-curate-edit").click()
    box = cards.nth(1).locator(".al-curate-text")
    assert box.input_value() == pro[1]["text"]  # prefilled with the document's text
    box.fill("Mofe's borders are well mapped.")
    assert cards.nth(0).get_attribute("data-curate") == "remove"
    assert cards.nth(0).locator(".al-curate-remove").get_attribute("aria-pressed") == "true"
    assert panel.locator(".al-curate-marks li").evaluate_all("els => els.map(e => e.dataset.id)") == \
        [pro[0]["id"], pro[1]["id"]]
    # the command: a placeholder until the index directory is known, then that path, shell-quoted
    command = page.locator(".al-curate-command")
    assert command.inner_text() == "attrilens curate --index INDEX_DIR --edit edit.jsonl --out curated"
    page.locator(".al-curate-index").fill("/data/my index")
    assert command.inner_text() == "attrilens curate --index '/data/my index' --edit edit.jsonl --out curated"
    want = [{"id": pro[0]["id"], "remove": True}, {"id": pro[1]["id"], "text": "Mofe's borders are well mapped."}]
    assert _download(page) == want
    assert [json.loads(x) for x in page.locator(".al-curate-jsonl").inner_text().splitlines()] == want
    # marks survive another selection (the lists are redrawn) and show on every card of that document
    page.locator(".al-view-training .al-tok", has_text=re.compile("^Vokur$")).click()
    page.locator(".al-view-training button", has_text="whole text").click()
    assert page.locator(".al-view-training .al-examples").first.locator(".al-example").nth(0) \
        .get_attribute("data-curate") == "remove"
    assert panel.locator(".al-curate-marks li").count() == 2
    # unmark from the panel; clicking "remove" again unmarks too
    panel.locator(f'.al-curate-marks li[data-id="{pro[1]["id"]}"] button').click()
    assert _download(page) == want[:1]
    cards.nth(0).locator(".al-curate-remove").click()
    assert "nothing marked yet" in panel.inner_text() and page.locator(".al-curate-download").is_disabled()
    assert watched.errors == [] and watched.dialogs == []


def test_hostile_ids_and_texts_stay_text_when_marked(watched, tmp_path):
    doc = fixture("training.json")[0]
    doc["proponents"][0] = {**doc["proponents"][0], "id": XSS_ID, "text": XSS_TEXT}
    page = open_report(watched, tmp_path, [doc], wait_for=".al-view-training .al-example")
    card = page.locator(".al-view-training .al-example").first
    card.locator(".al-curate-edit").click()
    assert card.locator(".al-curate-text").input_value() == XSS_TEXT
    panel = page.locator(".al-curate-panel")
    assert XSS_ID in panel.inner_text() and XSS_TEXT in panel.inner_text()
    assert _download(page) == [{"id": XSS_ID, "text": XSS_TEXT}]
    assert page.locator("#attrilens-app img, #attrilens-app script").count() == 0
    page.wait_for_timeout(200)
    assert watched.dialogs == [] and watched.errors == []


def test_the_web_app_exports_with_the_documents_index_path(watched, tmp_path):
    doc = {**fixture("training.json")[0], "index": "/srv/idx"}
    (tmp_path / "0.json").write_text(json.dumps(doc))
    lenses = FakeLenses()
    with LiveServer(create_app(lenses, report_dir=tmp_path)) as url:
        page = watched.page
        page.goto(url + "/")
        page.wait_for_selector(".al-view-training .al-example")
        page.locator(".al-view-training .al-example").nth(2).locator(".al-curate-remove").click()
        assert page.locator(".al-curate-command").inner_text() == \
            "attrilens curate --index /srv/idx --edit edit.jsonl --out curated"
        assert _download(page) == [{"id": doc["proponents"][2]["id"], "remove": True}]
        assert lenses.traces == []  # marking and exporting ask the server nothing
    assert watched.errors == [] and watched.dialogs == []
