"""The front end's Python side: joining the ES modules, the self-contained page, the widget, request validation."""

from __future__ import annotations

import json
import os
import re

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.view import bundle as bundle_mod  # noqa: E402
from attrilens.view import render_page, widget_for  # noqa: E402
from attrilens.view.page import script_json  # noqa: E402
from attrilens.view.requests import changed_span, compare, dispatch, parse  # noqa: E402

XSS = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>", "<!-- x", "a\u2028b & c"]


def _page_parts(page: str) -> dict[str, str]:
    return dict(re.findall(r'<script type="application/json" id="attrilens-(\w+)">(.*?)</script>', page, re.S))


def test_bundle_exports_default_render_for_the_widget_and_boots_the_page():
    widget = bundle_mod.bundle("widget.js")
    page = bundle_mod.bundle("page.js")
    assert "export default { render }" in widget
    assert page.rstrip().endswith("boot();")
    for text in (widget, page):
        assert not re.search(r"^\s*import\b", text, re.M), "every import must be joined"
        assert "const __al_dom = (() =>" in text and "const { mount } = __al_app;" in text


def test_bundle_rejects_cycles_unknown_modules_and_unknown_syntax(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "STATIC", tmp_path)
    bundle_mod.bundle.cache_clear()
    try:
        (tmp_path / "a.js").write_text('import { b } from "./b.js";\nexport const a = 1;\n')
        (tmp_path / "b.js").write_text('import { a } from "./a.js";\nexport const b = 2;\n')
        with pytest.raises(bundle_mod.BundleError, match="Import cycle"):
            bundle_mod.bundle("a.js")
        (tmp_path / "c.js").write_text('import { zzz } from "./missing.js";\n')
        with pytest.raises(bundle_mod.BundleError, match="missing.js imported but not in"):
            bundle_mod.bundle("c.js")
        (tmp_path / "d.js").write_text('import { e } from "./e.js";\nexport default { e };\n')
        (tmp_path / "e.js").write_text("export { f as e };\n")
        with pytest.raises(bundle_mod.BundleError, match="e.js has an import/export"):
            bundle_mod.bundle("d.js")
        (tmp_path / "g.js").write_text('const s = "</script>";\nexport default {};\n')
        with pytest.raises(bundle_mod.BundleError, match="</script"):
            bundle_mod.bundle("g.js")
    finally:
        bundle_mod.bundle.cache_clear()


def test_joined_modules_keep_renamed_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "STATIC", tmp_path)
    bundle_mod.bundle.cache_clear()
    try:
        (tmp_path / "x.js").write_text("export function one() { return 1; }\nexport const two = 2;\n")
        (tmp_path / "y.js").write_text('import { one as uno, two } from "./x.js";\nexport default { v: uno() + two };\n')
        text = bundle_mod.bundle("y.js")
        assert "const { one: uno, two } = __al_x;" in text and "return { one, two };" in text
    finally:
        bundle_mod.bundle.cache_clear()


def test_page_embeds_untrusted_text_only_escaped_and_round_trips():
    docs = [{"schema": "attrilens/training/v1", "prompt": XSS[0], "target": XSS[1], "extra": XSS[2:],
             "proponents": [{"score": float("nan"), "text": XSS[1]}], "opponents": [{"score": float("inf")}]}]
    page = render_page(docs, title=XSS[1])
    head, _, _ = page.partition('<script type="module">')
    assert "<img" not in head and "<script>alert" not in page and "<!-- x" not in page
    assert "<title>&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;</title>" in page
    parts = _page_parts(page)
    back = json.loads(parts["data"])
    assert back[0]["prompt"] == XSS[0] and back[0]["target"] == XSS[1] and back[0]["extra"] == XSS[2:]
    assert back[0]["proponents"][0]["score"] is None and back[0]["opponents"][0]["score"] is None
    assert json.loads(parts["config"]) == {"mode": "static"}


def test_page_csp_allows_exactly_its_own_script():
    import base64
    import hashlib

    page = render_page([], config={"mode": "server", "api": "api"})
    script = page.split('<script type="module">', 1)[1].rsplit("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "unsafe-inline'; img" not in page.split("script-src")[1][:80]
    assert json.loads(_page_parts(page)["config"]) == {"mode": "server", "api": "api"}


def test_script_json_escapes_every_markup_character():
    text = script_json({"a": "</script><b>&\u2028\u2029"})
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"a": "</script><b>&\u2028\u2029"}


class Recorder:
    """A test double for the lenses: answers from the request, remembers what it was asked."""

    def __init__(self):
        self.calls = []

    def trace(self, req):
        self.calls.append(req)
        return {"schema": "attrilens/training/v1", "prompt": req.prompt, "target": req.target or " generated text",
                "span": list(req.span) if req.span else None, "proponents": [], "opponents": []}


def test_widget_carries_documents_and_answers_requests_through_the_backend():
    docs = [{"schema": "attrilens/inspect/v1", "cells": [], "x": float("nan")}]
    w = widget_for(docs)
    assert w.documents == [{"schema": "attrilens/inspect/v1", "cells": [], "x": None}]
    assert "export default { render }" in w._esm and ".al-root" in w._css and w.can_compute is False
    assert w.can_verbatim is False
    w.request = {"id": "1", "kind": "trace", "payload": {"prompt": "p"}}
    assert w.response == {"id": "1", "document": None}

    backend = Recorder()
    w = widget_for(docs, backend=backend)
    assert w.can_compute is True and w.can_verbatim is False  # Recorder has no verbatim method

    class WithVerbatim(Recorder):
        def verbatim(self, req):
            return {}

    assert widget_for(docs, backend=WithVerbatim()).can_verbatim is True
    w.request = {"id": "2", "kind": "trace", "payload": {"prompt": "Q?", "target": " A B", "span": [1, 2]}}
    assert w.response["id"] == "2" and w.response["document"]["span"] == [1, 2]
    w.request = {"id": "3", "kind": "trace", "payload": {"prompt": ""}}
    assert w.response["id"] == "3" and "prompt" in w.response["error"] and "Fix these fields" in w.response["error"]


def test_widget_answers_a_request_whose_computation_crashes():
    class Crashing(Recorder):
        def trace(self, req):
            raise RuntimeError("CUDA out of memory")

    w = widget_for([], backend=Crashing())
    w.request = {"id": "9", "kind": "trace", "payload": {"prompt": "Q?", "target": " A"}}
    assert w.response["id"] == "9" and "RuntimeError: CUDA out of memory" in w.response["error"]


def test_parse_names_the_bad_field_and_the_fix():
    with pytest.raises(AttrilensError, match=r"Bad trace request: span: .*0 <= start < end.*Fix these fields"):
        parse("trace", {"prompt": "p", "span": [5, 2]})
    with pytest.raises(AttrilensError, match=r"top_k"):
        parse("trace", {"prompt": "p", "top_k": 0})
    with pytest.raises(AttrilensError, match=r"path: Extra inputs are not permitted"):
        parse("context", {"context": "c", "query": "q", "path": "/etc/passwd"})
    with pytest.raises(AttrilensError, match=r"Unknown request 'shell'\. Use one of: trace, context"):
        parse("shell", {})
    with pytest.raises(AttrilensError, match=r"must be a JSON object, got list"):
        parse("trace", [])


def test_changed_span_is_a_word_level_diff():
    a, b = " The seat is Murtin today.", " The seat is Reve today."
    sa, sb = changed_span(a, b)
    assert a[sa[0]:sa[1]] == "Murtin" and b[sb[0]:sb[1]] == "Reve"
    sa, sb = changed_span("one two", "one two three four")
    assert sa is None and sb == (8, 18)


def test_compare_traces_each_version_on_its_changed_words():
    backend = Recorder()
    doc = dispatch(backend, "compare", {"prompt": "Q?", "model_text": " it is Murtin", "user_text": " it is Reve"})
    assert doc["schema"] == "attrilens/compare/v1" and doc["model"]["span"] == [7, 13] and doc["user"]["span"] == [7, 11]
    generated = compare(backend, parse("compare", {"prompt": "Q?", "user_text": " generated words"}))
    assert generated["model_text"] == " generated text" and generated["user"]["target"] == " generated words"
    with pytest.raises(AttrilensError, match="same as the model's, word for word"):
        dispatch(backend, "compare", {"prompt": "Q?", "model_text": " a  b", "user_text": "a b"})
