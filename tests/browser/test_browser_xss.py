"""Untrusted text (corpus lines, prompts, responses, tokens) shows as text in every view and never runs."""

from __future__ import annotations

import json

from attrilens.app.server import create_app
from attrilens.view import render_page
from live import LiveServer
from pages import fixture
from test_browser_app import FakeLenses

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "</script><script>alert(2)</script>"


def assert_inert(watched):
    page = watched.page
    page.wait_for_selector(".al-view-inspect")
    page.locator('.al-cell[data-layer="0"][data-position="0"]').click()  # its top token and generation are hostile
    for view in ("training", "context", "inspect", "compare"):
        texts = page.locator(f".al-view-{view}").inner_text()
        assert XSS_IMG in texts or XSS_IMG.replace(" ", "␣") in texts, view
    assert XSS_SCRIPT in page.locator(".al-view-training").inner_text()
    assert XSS_SCRIPT in page.locator(".al-view-context").inner_text()
    assert XSS_SCRIPT in page.locator(".al-generation").inner_text()
    assert page.get_by_text(XSS_IMG, exact=False).first.is_visible()
    assert page.locator("#attrilens-app img, #attrilens-app script").count() == 0
    page.wait_for_timeout(200)
    assert watched.dialogs == [], "an injected script ran"
    assert watched.errors == []


def test_report_shows_hostile_text_as_text(watched, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_page(fixture("xss.json"), title=XSS_SCRIPT), encoding="utf-8")
    watched.page.goto(path.as_uri())
    assert watched.page.title() == XSS_SCRIPT
    assert_inert(watched)


def test_web_app_shows_hostile_text_as_text(watched, tmp_path):
    (tmp_path / "xss.json").write_text(json.dumps(fixture("xss.json")))
    with LiveServer(create_app(FakeLenses(), report_dir=tmp_path)) as url:
        watched.page.goto(url + "/")
        assert_inert(watched)
        # a hostile selection round-trips through the API and is still text
        watched.page.locator(".al-view-training .al-tok", has_text="</script><script>alert(2)</script>").click()
        watched.page.wait_for_selector('.al-example[data-id="for:</script><script>alert(2)</script>:0"]')
        assert watched.dialogs == []


def test_verbatim_spans_show_hostile_text_as_text(watched, tmp_path):
    verbatim = fixture("verbatim.json")  # hostile text in the response, the spans, document ids and texts
    path = tmp_path / "verbatim.html"
    path.write_text(render_page([verbatim], title=XSS_SCRIPT), encoding="utf-8")
    page = watched.page
    page.goto(path.as_uri())
    page.wait_for_selector(".al-view-training .al-vspan")
    for k in range(len(verbatim["spans"])):  # every span's documents, each one whole
        page.locator(f'.al-view-training .al-vchip[data-span="{k}"]').click()
        for button in page.locator(".al-view-training .al-stated button", has_text="show whole document").all():
            button.click()
        assert page.locator("#attrilens-app img, #attrilens-app script, #attrilens-app b").count() == 0
    text = page.locator(".al-view-training").inner_text()
    assert XSS_IMG in text and XSS_SCRIPT in text and "<b>bold</b>" in text
    page.wait_for_timeout(200)
    assert watched.dialogs == [], "an injected script ran"
    assert watched.errors == []
