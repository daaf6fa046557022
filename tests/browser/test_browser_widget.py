"""The Jupyter widget: a notebook executed headless (nbclient + ipykernel); its saved widget state rendered by the
widget's own ES module (`_esm`) in chromium, through a minimal anywidget model, without console errors."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient

from pages import FIXTURES

MODEL_SHIM = """
async ({ state }) => {
  const listeners = {};
  const sent = [];
  const model = {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; (listeners["change:" + k] || []).forEach((f) => f()); },
    on: (ev, f) => { (listeners[ev] = listeners[ev] || []).push(f); },
    off: (ev, f) => { listeners[ev] = (listeners[ev] || []).filter((g) => g !== f); },
    save_changes: () => sent.push(JSON.parse(JSON.stringify({ selection: state.selection, request: state.request }))),
    send: () => {},
  };
  window.__model = model;
  window.__sent = sent;
  const style = document.createElement("style");
  style.textContent = state._css;
  document.head.appendChild(style);
  const url = URL.createObjectURL(new Blob([state._esm], { type: "text/javascript" }));
  const mod = await import(url);
  mod.default.render({ model, el: document.getElementById("out") });
}
"""


def run_notebook(tmp_path):
    docs = json.loads((FIXTURES / "training.json").read_text()) + json.loads((FIXTURES / "xss.json").read_text())[1:3]
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import json\nfrom attrilens.view import widget_for\n"
        f"w = widget_for(json.load(open({str(tmp_path / 'docs.json')!r})))\nw")]
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute()
    out = nb.cells[0].outputs
    assert not [o for o in out if o.output_type == "error"], out
    model_id = next(o for o in out if o.output_type == "execute_result")["data"][
        "application/vnd.jupyter.widget-view+json"]["model_id"]
    return nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"][model_id]["state"], docs


def test_widget_from_an_executed_notebook_renders_and_sends_selections_back(watched, tmp_path):
    state, docs = run_notebook(tmp_path)
    assert state["documents"] == docs and state["can_compute"] is False
    page = watched.page
    page.set_content("<!doctype html><meta charset='utf-8'><body><div id='out'></div></body>")
    page.evaluate(MODEL_SHIM, {"state": state})
    page.wait_for_selector("#out .al-view-inspect")
    for view in ("training", "context", "inspect"):
        assert page.locator(f"#out .al-view-{view}").is_visible()
    assert "<img src=x onerror=alert(1)>" in page.locator("#out .al-view-context").inner_text()
    assert page.locator("#out img").count() == 0
    # a selection goes back to Python (the `selection` trait)
    page.locator("#out .al-view-training .al-tok", has_text="Vokur").click()
    sent = page.evaluate("window.__sent")
    assert sent[-1]["selection"]["kind"] == "trace" and sent[-1]["selection"]["span"] == [27, 32]
    # new documents from Python redraw the widget
    page.evaluate("window.__model.set('documents', window.__model.get('documents').slice(0, 1))")
    assert page.locator("#out .al-view-inspect").count() == 0 and page.locator("#out .al-view-training").count() == 1
    page.wait_for_timeout(100)
    assert watched.errors == [] and watched.dialogs == []
