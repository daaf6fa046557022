"""Verbatim spans in the views, Python side: the result contract the front end reads, the `verbatim` request (checked,
dispatched, routed by the web app and the widget, wired to a real verbatim index), and the report embedding it safely."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

os.environ["HF_HUB_OFFLINE"] = "1"

from attrilens.app.backend import LensBackend  # noqa: E402
from attrilens.app.server import create_app  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from attrilens.training.verbatim import VerbatimResult  # noqa: E402
from attrilens.view import render_page, widget_for  # noqa: E402
from attrilens.view.bundle import bundle  # noqa: E402
from attrilens.view.requests import VerbatimRequest, can_answer, dispatch, parse  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "verbatim.json"
BASE = "http://127.0.0.1:8765"
HOSTILE = ("<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>")


def verbatim_fixture() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def check_contract(doc: dict) -> None:
    """Everything the front end relies on in an "attrilens/verbatim/v1" document (/tmp/lead/contract.md)."""
    assert list(doc) == ["schema", "method", "prompt", "target", "min_len", "n_corpus_tokens", "spans", "cost"]
    assert doc["schema"] == "attrilens/verbatim/v1" and doc["method"] == "verbatim"
    assert isinstance(doc["min_len"], int) and isinstance(doc["n_corpus_tokens"], int) and isinstance(doc["cost"], dict)
    end = 0
    for sp in doc["spans"]:
        assert set(sp) == {"start", "end", "text", "tokens", "count", "unigram_logprob", "documents"}
        assert end <= sp["start"] < sp["end"] <= len(doc["target"]), "spans sorted by start, non-overlapping"
        assert doc["target"][sp["start"]:sp["end"]] == sp["text"]
        first, last = sp["tokens"]
        assert 0 <= first < last and last - first >= doc["min_len"]
        assert sp["count"] >= 1 and isinstance(sp["unigram_logprob"], float)
        assert [d["rank"] for d in sp["documents"]] == list(range(1, len(sp["documents"]) + 1))
        for d in sp["documents"]:
            assert set(d) == {"rank", "id", "score", "text", "matches"} and isinstance(d["id"], str)
            assert d["matches"], "a listed document contains the span"
            for a, b in d["matches"]:
                assert d["text"][a:b] == sp["text"]
        end = sp["end"]


def test_fixture_follows_the_contract_and_round_trips_through_the_result():
    doc = verbatim_fixture()
    check_contract(doc)
    assert VerbatimResult.from_dict(doc).to_dict() == doc
    assert len(doc["spans"]) >= 3 and any(len(d["matches"]) > 1 for s in doc["spans"] for d in s["documents"])
    texts = [doc["target"]] + [d["text"] for s in doc["spans"] for d in s["documents"]]
    assert all(any(x in t for t in texts) for x in HOSTILE), "hostile text in the response and the documents"
    assert any(len(t) != len(t.encode("utf-16-le")) // 2 for t in texts), "an emoji: offsets are code points"


@pytest.mark.parametrize(("payload", "fragment"), [
    ({"target": " A"}, "prompt: Field required"),
    ({"prompt": "", "target": " A"}, "prompt: String should have at least 1 character"),
    ({"prompt": "Q?", "target": ""}, "target: String should have at least 1 character"),
    ({"prompt": "Q?", "target": " A", "min_len": 0}, "min_len: Input should be greater than or equal to 1"),
    ({"prompt": "Q?", "target": " A", "top_k": 101}, "top_k: Input should be less than or equal to 100"),
    ({"prompt": "Q?", "target": " A", "index": "/etc"}, "index: Extra inputs are not permitted"),
    ({"prompt": "Q?", "target": 3}, "target: Input should be a valid string"),
])
def test_verbatim_request_names_the_bad_field(payload, fragment):
    with pytest.raises(AttrilensError, match=r"^Bad verbatim request: .*Fix these fields\.$") as err:
        parse("verbatim", payload)
    assert fragment in str(err.value)


def test_verbatim_request_defaults_generate_and_use_the_index_min_len():
    req = parse("verbatim", {"prompt": "Q?"})
    assert isinstance(req, VerbatimRequest) and (req.target, req.min_len, req.top_k) == (None, None, 10)


class Lenses:
    """Test double: the lenses plus a verbatim index that echoes the request into the fixture."""

    def __init__(self):
        self.calls = []

    def trace(self, req):
        return {"schema": "attrilens/training/v1", "prompt": req.prompt, "target": req.target, "proponents": [],
                "opponents": []}

    def verbatim(self, req):
        self.calls.append(req)
        return dict(verbatim_fixture(), prompt=req.prompt)


class NoVerbatim(Lenses):
    verbatim = None


def test_dispatch_calls_the_backend_and_refuses_a_backend_without_an_index():
    lenses = Lenses()
    doc = dispatch(lenses, "verbatim", {"prompt": "Q?", "target": " A", "min_len": 5, "top_k": 3})
    assert doc["prompt"] == "Q?" and (lenses.calls[0].min_len, lenses.calls[0].top_k) == (5, 3)
    assert can_answer(lenses, "verbatim") and not can_answer(NoVerbatim(), "verbatim")
    with pytest.raises(AttrilensError, match=r"does not answer verbatim requests.*--verbatim-index DIR"):
        dispatch(NoVerbatim(), "verbatim", {"prompt": "Q?", "target": " A"})
    assert not can_answer(LensBackend(None), "verbatim") and can_answer(LensBackend(None, verbatim_dir="v"), "verbatim")
    assert can_answer(LensBackend(None), "trace")
    with pytest.raises(AttrilensError, match=r"No verbatim index: start the app with --verbatim-index DIR"):
        dispatch(LensBackend(None), "verbatim", {"prompt": "Q?", "target": " A"})


def test_web_app_routes_verbatim_and_tells_the_page_whether_it_can():
    client = TestClient(create_app(Lenses()), base_url=BASE)
    r = client.post("/api/verbatim", json={"prompt": "Q?", "target": " A"})
    assert r.status_code == 200 and r.json()["spans"] == verbatim_fixture()["spans"]
    r = client.post("/api/verbatim", json={"prompt": "Q?", "target": ""})
    assert r.status_code == 400 and r.json()["detail"].startswith("Bad verbatim request: target")
    assert client.get("/api/health").json()["verbatim"] is True
    config = re.search(r'id="attrilens-config">(.*?)</script>', client.get("/").text, re.S).group(1)
    assert json.loads(config)["choices"]["verbatim"] is True

    client = TestClient(create_app(NoVerbatim()), base_url=BASE)
    r = client.post("/api/verbatim", json={"prompt": "Q?", "target": " A"})
    assert r.status_code == 400 and "--verbatim-index" in r.json()["detail"]
    assert client.get("/api/health").json()["verbatim"] is False
    config = re.search(r'id="attrilens-config">(.*?)</script>', client.get("/").text, re.S).group(1)
    assert json.loads(config)["choices"]["verbatim"] is False


def test_widget_answers_verbatim_requests():
    w = widget_for([verbatim_fixture()], backend=Lenses())
    w.request = {"id": "1", "kind": "verbatim", "payload": {"prompt": "Q?", "target": " A"}}
    assert w.response["id"] == "1" and w.response["document"]["spans"] == verbatim_fixture()["spans"]
    w.request = {"id": "2", "kind": "verbatim", "payload": {"prompt": "Q?", "target": ""}}
    assert "target" in w.response["error"]


def test_report_embeds_the_verbatim_result_only_escaped():
    doc = verbatim_fixture()
    for page in (render_page([doc], title=HOSTILE[1]), VerbatimResult.from_dict(doc).to_html(title=HOSTILE[1])):
        head, _, rest = page.partition('<script type="module">')
        script, _, tail = rest.rpartition("</script>")
        assert "<img" not in head + tail and "<script>alert" not in page and "</script><script>" not in script
        data = re.search(r'id="attrilens-data">(.*?)</script>', head, re.S).group(1)
        assert json.loads(data) == [doc]
        assert "// ---- verbatim.js" in script and "innerHTML" not in script
    assert "innerHTML" not in bundle("widget.js") and "insertAdjacentHTML" not in bundle("page.js")


@pytest.mark.parametrize(("argv", "fragment"), [
    (["serve", "--verbatim-index", "{missing}"], "--verbatim-index"),
    (["serve", "--verbatim-index", "{dir}"], "needs --model"),
    (["serve", "--model", "{model}", "--verbatim-index", "{dir}"], "not an attrilens index"),
    (["serve", "--model", "{model}", "--verbatim-index", "{gradient}"], "is a trackstar index, not a verbatim one"),
])
def test_serve_refuses_a_bad_verbatim_index(argv, fragment, tmp_path, monkeypatch, capsys):
    from attrilens.cli.app import main
    from attrilens.demo.index import DEMO_INDEX
    from attrilens.demo.paths import demo_model_dir

    files = {"missing": str(tmp_path / "missing"), "dir": str(tmp_path), "model": str(demo_model_dir("target")),
             "gradient": str(DEMO_INDEX)}
    monkeypatch.setattr(sys, "argv", ["attrilens", *[a.format(**files) for a in argv]])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1 and fragment in lines[0], err


# ---------------------------------------------------------------- the real verbatim index, end to end

PLANTED = " the seat of government of Vokur lies in the city of Murtin"


def planted_corpus() -> list[dict]:
    """The demo world's corpus (enough text for the suffix-array builder) plus documents planting a span verbatim."""
    from attrilens.demo.paths import demo_world_dir
    from attrilens.jsonl import load_jsonl

    docs = load_jsonl(demo_world_dir() / "corpus.jsonl", require=())[:300]
    return docs + [
        {"id": f"planted {HOSTILE[0]}", "text": f"Noise {HOSTILE[1]} then:{PLANTED}, they say."},
        {"id": "planted-twice", "text": f"Twice:{PLANTED}; and again:{PLANTED}!"},
    ]


@pytest.fixture(scope="module")
def verbatim_app(tmp_path_factory):
    """The demo model and a verbatim index of the planted corpus, behind the real LensBackend."""
    import torch

    from attrilens.demo.paths import demo_model_dir
    from attrilens.lm import LM
    from attrilens.training.verbatim import build_verbatim_index

    torch.set_num_threads(1)
    lm = LM.from_pretrained(demo_model_dir("target"))
    out = tmp_path_factory.mktemp("verbatim") / "index"
    build_verbatim_index(lm, planted_corpus(), out, progress=False)
    return LensBackend(None, lm=lm, verbatim_dir=out)


def test_real_verbatim_index_answers_through_dispatch_and_renders(verbatim_app):
    target = f"{PLANTED}. Nothing else."
    doc = dispatch(verbatim_app, "verbatim", {"prompt": "Question: where?\nAnswer:", "target": target, "min_len": 4})
    check_contract(doc)
    planted = [sp for sp in doc["spans"] if PLANTED.strip() in sp["text"]]
    assert len(planted) == 1 and (planted[0]["start"], planted[0]["end"]) == (0, len(PLANTED))
    ids = {d["id"]: d for d in planted[0]["documents"]}
    texts = {d["id"]: d["text"] for d in planted_corpus()}
    for name in (f"planted {HOSTILE[0]}", "planted-twice"):  # each occurrence, where it was planted
        want = [[m.start(), m.end()] for m in re.finditer(re.escape(PLANTED), texts[name])]
        assert ids[name]["text"] == texts[name] and ids[name]["matches"] == want
    assert len(ids["planted-twice"]["matches"]) == 2
    page = render_page([doc])
    assert "<img" not in page.partition('<script type="module">')[0]
    from attrilens.demo.paths import demo_model_dir

    # what `attrilens serve --model DIR --verbatim-index IDX` builds
    client = TestClient(create_app(model_dir=demo_model_dir("target"), verbatim_dir=verbatim_app.verbatim_dir), base_url=BASE)
    assert client.get("/api/health").json()["verbatim"] is True
    assert client.post("/api/verbatim", json={"prompt": "Q?", "target": target, "min_len": 4}).json()["spans"] == doc["spans"]
    r = client.post("/api/verbatim", json={"prompt": "Q?", "target": "   "})
    assert r.status_code == 400 and "empty" in r.json()["detail"]


def test_span_traces_give_the_static_report_a_gradient_result_per_span(verbatim_app):
    from attrilens.app.precompute import span_traces
    from attrilens.demo.index import DEMO_INDEX
    from attrilens.training import TrainingIndex

    prompt, target = "Question: where?\nAnswer:", f"{PLANTED}. Nothing else."
    verbatim = dispatch(verbatim_app, "verbatim", {"prompt": prompt, "target": target, "min_len": 4})
    assert verbatim["spans"]
    index = TrainingIndex.open(DEMO_INDEX, verbatim_app.lm())
    docs = span_traces(index, VerbatimResult.from_dict(verbatim), top_k=3, progress=False)
    assert [d.get("span") for d in docs] == [None] + [[s["start"], s["end"]] for s in verbatim["spans"]]
    assert docs[0]["proponents"] == index.trace(prompt, target=target, top_k=3).to_dict()["proponents"]
    for d, sp in zip(docs[1:], verbatim["spans"], strict=True):
        # the gradient trace of a span's characters covers exactly the span's response tokens
        assert d["tokens"] == list(range(*sp["tokens"])) and (d["prompt"], d["target"]) == (prompt, target)
        direct = index.trace(prompt, target=target, top_k=3, span=(sp["start"], sp["end"])).to_dict()
        assert d["proponents"] == direct["proponents"]
    with pytest.raises(AttrilensError, match="needs a 'attrilens/verbatim/v1' result"):
        span_traces(index, docs[0])
