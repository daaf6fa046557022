"""The web app with a test double for the lenses (injected into create_app): selections recompute through the API."""

from __future__ import annotations

import re

import pytest

from attrilens.app.server import create_app
from live import LiveServer
from pages import fixture, report_documents


class FakeLenses:
    """Test double: answers from the request itself, so the test knows what each selection must show."""

    def __init__(self):
        self.traces = []
        self.contexts = []
        self.inspects = []

    def trace(self, req):
        self.traces.append(req)
        target = req.target or " The seat of government of Vokur is Murtin."
        chosen = target[req.span[0]:req.span[1]] if req.span else target.strip()
        pro = [{"rank": k + 1, "id": f"for:{chosen}:{k}", "block": 0, "text": f"training text about {chosen} ({k})",
                "score": 1.0 - 0.2 * k} for k in range(3)]
        opp = [{"rank": 1, "id": f"against:{chosen}", "block": 2, "text": "unrelated", "score": -0.4}]
        return {"schema": "attrilens/training/v1", "method": "fake", "prompt": req.prompt, "target": target, "tokens": [],
                "proponents": pro, "opponents": opp, "cost": {"seconds": 0.0, "examples_scored": 10}}

    def context(self, req):
        self.contexts.append(req)
        doc = fixture("context.json")
        for s in doc["sources"]:
            if s["score"] is not None:
                s["score"] = -s["score"]
        return doc

    def inspect(self, req):
        self.inspects.append(req)
        return fixture("inspect.json")

    def neighbors(self, req):
        return {"id": req.id, "block": req.block, "neighbors": [{"block": 1, "text": f"block after {req.id}"}]}


@pytest.fixture()
def app_page(watched, tmp_path):
    import json

    for k, doc in enumerate(report_documents()[:1] + [fixture("context.json")]):
        (tmp_path / f"{k}.json").write_text(json.dumps(doc))
    lenses = FakeLenses()
    with LiveServer(create_app(lenses, report_dir=tmp_path)) as url:
        watched.page.goto(url + "/")
        watched.page.wait_for_selector(".al-view-context")
        yield watched.page, lenses


def test_dragging_a_token_range_changes_the_training_examples(app_page, watched):
    page, lenses = app_page
    examples = page.locator(".al-view-training .al-examples").first.locator(".al-example")
    before = examples.evaluate_all("els => els.map(e => e.dataset.id)")
    page.locator(".al-view-training .al-tok", has_text="seat").hover()
    page.mouse.down()
    page.locator(".al-view-training .al-tok", has_text="government").hover()
    page.mouse.up()
    page.wait_for_selector('.al-example[data-id="for:seat of government:0"]')
    after = examples.evaluate_all("els => els.map(e => e.dataset.id)")
    assert after != before and after == [f"for:seat of government:{k}" for k in range(3)]
    assert list(lenses.traces[-1].span) == [5, 23]
    assert page.locator(".al-view-training .al-tok.al-selected").all_inner_texts() == ["seat", "of", "government"]
    # a single click, then shift+click extends the selection
    page.locator(".al-view-training .al-tok", has_text="Vokur").click()
    page.wait_for_selector('.al-example[data-id="for:Vokur:0"]')
    page.locator(".al-view-training .al-tok", has_text="Murtin").click(modifiers=["Shift"])
    page.wait_for_selector('.al-example[data-id="for:Vokur is Murtin.:0"]')
    # neighbours load from the API on expand
    page.locator(".al-view-training button", has_text="show neighbours").first.click()
    page.wait_for_selector("text=block after for:Vokur is Murtin.:0")
    assert watched.errors == []


def test_comparison_from_the_app_shows_both_texts_and_a_diff(app_page, watched):
    page, _ = app_page
    page.locator(".al-view-training summary", has_text="Compare with your own text").click()
    page.locator(".al-view-training textarea").fill(" The seat of government of Vokur is Reve, they say.")
    page.locator(".al-view-training button", has_text="compare").click()
    view = page.locator(".al-view-compare")
    view.wait_for()
    assert "Vokur is Murtin." in view.locator(".al-compare-model").inner_text()
    assert "Vokur is Reve, they say." in view.locator(".al-compare-user").inner_text()
    assert view.locator("del").all_inner_texts() == ["Murtin."]
    assert view.locator("ins").all_inner_texts() == ["Reve,", "they", "say."]
    assert view.locator('.al-example[data-id="for:Murtin.:0"]').count() == 1
    assert view.locator('.al-example[data-id="for:Reve, they say.:0"]').count() == 1
    assert watched.errors == []


def test_selecting_a_response_span_re_attributes_the_context(app_page, watched):
    page, lenses = app_page
    red = page.locator('.al-view-context .al-src[data-index="5"]')
    assert red.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(178, 24, 43)"
    page.locator(".al-view-context .al-tok", has_text=re.compile("^Berpas,$")).click()
    page.wait_for_function("""() => getComputedStyle(document.querySelector('.al-view-context .al-src[data-index="5"]'))
                              .backgroundColor === 'rgb(33, 102, 172)'""")
    req = lenses.contexts[-1]
    assert list(req.span) == [1, 8] and req.response == " Berpas, the currency of Songor." and req.query.startswith("What")
    assert "Songor pays with a currency called the Berpas." in req.context
    assert watched.errors == []


def test_server_errors_show_in_the_page(watched):
    class Broken(FakeLenses):
        def trace(self, req):
            from attrilens.errors import AttrilensError

            raise AttrilensError("The index was built for another model. Rebuild it with this model.")

    with LiveServer(create_app(Broken())) as url:
        page = watched.page
        page.goto(url + "/")
        page.locator(".al-new summary").click()
        page.locator('textarea[aria-label="prompt"]').fill("Question: where?")
        page.locator(".al-new button", has_text="trace").click()
        page.wait_for_selector(".al-notice-error")
        assert "another model" in page.locator(".al-notice-error").inner_text()
    assert [e for e in watched.errors if "400" not in e] == []


def test_the_form_sends_method_preset_position_and_response_and_shows_the_new_result_in_view(app_page, watched):
    from attrilens.context import method_names
    from attrilens.patchscopes import presets

    page, lenses = app_page
    page.locator(".al-new summary").click()
    assert page.locator("#al-presets option").count() == len(presets.PRESETS.names())
    assert page.locator("#al-methods option").count() == len(method_names())
    page.locator('input[aria-label="prompt to inspect"]').fill("The capital of France is")
    page.locator('input[aria-label="preset (default logit-lens)"]').fill("token-identity")
    page.locator('input[aria-label="layer (empty: all)"]').fill("2")
    page.locator('input[aria-label="position (empty: all; -1 = last)"]').fill("-1")
    page.locator(".al-new button", has_text="inspect").click()
    page.wait_for_selector(".al-view-inspect.al-fresh")
    req = lenses.inspects[-1]
    assert (req.prompt, req.preset, req.layer, req.position, req.target_prompt) == (
        "The capital of France is", "token-identity", 2, -1, None)
    box = page.locator(".al-fresh").bounding_box()
    assert box is not None and 0 <= box["y"] < 900  # scrolled to where the user is looking
    assert page.locator('input[aria-label="prompt to inspect"]').input_value() == "The capital of France is"
    page.locator('textarea[aria-label="context"]').fill("Alpha is red. Beta is blue.")
    page.locator('input[aria-label="query"]').fill("What is red?")
    page.locator('input[aria-label="response (empty: the model answers)"]').fill(" Alpha")
    page.locator('input[aria-label="method (default cached)"]').fill("loo")
    page.locator(".al-new button", has_text="attribute").click()
    page.wait_for_selector(".al-view-context.al-fresh")
    req = lenses.contexts[-1]
    assert (req.response, req.method, req.query) == (" Alpha", "loo", "What is red?")
    assert watched.errors == []


def test_the_forms_option_fields_are_built_from_the_options_description(app_page, watched):
    """Each method's option fields come from `attrilens methods`' description; what is typed reaches the request."""
    from attrilens.app.methods import form_options

    described = form_options()
    page, lenses = app_page
    page.locator(".al-new summary").click()
    context_box = page.locator(".al-box", has=page.locator('input[aria-label="query"]'))
    inspect_box = page.locator(".al-box", has=page.locator('input[aria-label="prompt to inspect"]'))
    fields = lambda box: box.locator(".al-option").evaluate_all("els => els.map(e => e.dataset.option)")  # noqa: E731
    assert fields(context_box) == [] and described["context"]["cached"] == []  # the default method takes none
    assert fields(inspect_box) == [o["name"] for o in described["presets"]["logit-lens"]]  # the default preset's
    page.locator('input[aria-label="method (default cached)"]').fill("cached+hierarchical")
    hierarchical = described["context"]["hierarchical"]
    assert fields(context_box) == [o["name"] for o in hierarchical] == ["top_k", "paragraph_k"]
    field = page.locator('input[aria-label="option paragraph_k"]')
    assert field.get_attribute("title") == hierarchical[1]["help"] and "int | None" in field.get_attribute("placeholder")
    assert hierarchical[1]["help"] in page.locator('.al-option[data-option="paragraph_k"]').inner_text()
    page.locator('textarea[aria-label="context"]').fill("Alpha is red. Beta is blue.")
    page.locator('input[aria-label="query"]').fill("What is red?")
    field.fill("1")
    page.locator(".al-new button", has_text="attribute").click()
    page.wait_for_selector(".al-view-context.al-fresh")
    assert (lenses.contexts[-1].method, lenses.contexts[-1].options) == ("cached+hierarchical", {"paragraph_k": "1"})
    # a preset's fields: those text can give (a target model cannot)
    page.locator('input[aria-label="preset (default logit-lens)"]').fill("custom")
    custom = [o["name"] for o in described["presets"]["custom"]]
    assert fields(inspect_box) == custom and "target_layers" in custom and "target_model" not in custom
    page.locator('input[aria-label="prompt to inspect"]').fill("The capital of France is")
    page.locator('input[aria-label="option target_layers"]').fill("0,1")
    page.locator(".al-new button", has_text="inspect").click()
    page.wait_for_selector(".al-view-inspect.al-fresh")
    assert lenses.inspects[-1].options == {"target_layers": "0,1"}
    assert watched.errors == []


def test_option_help_with_markup_stays_text(watched):
    """Descriptions are text: a registered method whose help holds markup draws it as characters, runs nothing."""
    from dataclasses import dataclass

    from attrilens.context import CONTEXT_METHODS, ContextMethod
    from attrilens.options import option

    @dataclass(frozen=True)
    class Loud:
        volume: int = option(1, help="<img src=x onerror=alert(1)> loud")

    @CONTEXT_METHODS.register("loud-toy")
    class LoudToy(ContextMethod):
        """Toy."""

        Options = Loud

    try:
        with LiveServer(create_app(FakeLenses())) as url:
            page = watched.page
            page.goto(url + "/")
            page.locator(".al-new summary").click()
            page.locator('input[aria-label="method (default cached)"]').fill("loud-toy")
            help_text = page.locator('.al-option[data-option="volume"] .al-option-help')
            assert help_text.inner_text() == "<img src=x onerror=alert(1)> loud"
            assert page.locator(".al-options img").count() == 0
    finally:
        CONTEXT_METHODS.unregister("loud-toy")
    assert watched.dialogs == [] and watched.errors == []
