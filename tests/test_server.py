"""The web app's JSON API: same documents as the lenses, 413 over the size limit, names checked against the registries, no mixing."""

from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))

from attrilens.app.backend import LensBackend  # noqa: E402
from attrilens.app.server import create_app, load_report  # noqa: E402
from attrilens.errors import AttrilensError  # noqa: E402
from live import LiveServer  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


BASE = "http://127.0.0.1:8765"  # the address `attrilens serve` prints; other Host headers are refused
JSON = {"content-type": "application/json"}


class SlowEcho:
    """Test double for the lenses: a result computed from the request alone, after a random delay."""

    def __init__(self):
        self.active = 0
        self.overlap = False
        self.guard = threading.Lock()

    def trace(self, req):
        with self.guard:
            self.active += 1
            self.overlap |= self.active > 1
        time.sleep(random.uniform(0.0, 0.02))
        with self.guard:
            self.active -= 1
        return {"schema": "attrilens/training/v1", "prompt": req.prompt, "target": req.target, "span": list(req.span),
                "proponents": [{"rank": 1, "id": f"for-{req.prompt}", "block": 0, "text": req.prompt, "score": 1.0}],
                "opponents": []}

    def context(self, req):
        return {"schema": "attrilens/context/v1", "method": req.method, "query": req.query}

    def inspect(self, req):
        raise AttrilensError(f"Layer {req.layer} is out of range. Pass 0..4.")

    def neighbors(self, req):
        return {"id": req.id, "block": req.block, "neighbors": [{"block": 1, "text": "next"}]}


@pytest.fixture()
def client():
    return TestClient(create_app(SlowEcho(), report_dir=FIXTURES, max_body=2_000), base_url=BASE)


def test_page_embeds_the_report_documents_in_server_mode(client):
    page = client.get("/").text
    data = json.loads(re.search(r'id="attrilens-data">(.*?)</script>', page, re.S).group(1))
    schemas = sorted({d["schema"] for d in data})
    assert schemas == ["attrilens/compare/v1", "attrilens/context/v1", "attrilens/inspect/v1", "attrilens/training/v1",
                       "attrilens/verbatim/v1"]
    assert '"mode": "server"' in page
    assert client.get("/api/documents").json() == data
    assert client.get("/api/health").json()["documents"] == len(data)


def test_api_returns_the_backend_document_unchanged(client):
    r = client.post("/api/trace", json={"prompt": "Q?", "target": " A B", "span": [1, 2]})
    assert r.status_code == 200 and r.json()["span"] == [1, 2] and r.json()["proponents"][0]["id"] == "for-Q?"
    r = client.post("/api/neighbors", json={"id": "doc-1", "block": 0})
    assert r.json()["neighbors"] == [{"block": 1, "text": "next"}]


def test_oversized_bodies_get_413_declared_or_streamed(client):
    r = client.post("/api/trace", json={"prompt": "x" * 5_000})
    assert r.status_code == 413 and "over 2000 bytes" in r.json()["detail"]

    def chunks():
        for _ in range(10):
            yield b"x" * 500

    r = client.post("/api/trace", content=chunks(), headers=JSON)  # chunked: no Content-Length
    assert r.status_code == 413


def test_bad_requests_say_what_is_wrong(client):
    r = client.post("/api/trace", content=b"{not json", headers=JSON)
    assert r.status_code == 400 and "Body is not JSON" in r.json()["detail"]
    r = client.post("/api/trace", json={"prompt": "p", "span": [3, 1]})
    assert r.status_code == 400 and "span" in r.json()["detail"]
    r = client.post("/api/trace", json={"prompt": "p", "index": "/etc"})
    assert r.status_code == 400 and "index: Extra inputs are not permitted" in r.json()["detail"]
    r = client.post("/api/inspect", json={"prompt": "p", "layer": 9})
    assert r.status_code == 400 and r.json()["detail"] == "Layer 9 is out of range. Pass 0..4."
    r = client.post("/api/context", json={"context": "c", "query": "q", "method": "fastest"})
    assert r.status_code == 400 and "Unknown" in r.json()["detail"] and "contextcite" in r.json()["detail"]
    assert client.post("/api/context", json={"context": "c", "query": "q", "method": "proxy_pruning"}).status_code == 200
    r = client.post("/api/inspect", json={"prompt": "p", "preset": "xray"})
    assert r.status_code == 400 and "logit-lens" in r.json()["detail"]
    assert client.post("/api/inspect", json={"prompt": "p", "preset": "logit_lens", "layer": 9}).status_code == 400
    assert client.get("/api/trace").status_code == 405


def test_options_go_through_the_methods_options_protocol(client):
    r = client.post("/api/context", json={"context": "c", "query": "q", "method": "hierarchical",
                                          "options": {"colour": "red"}})
    assert r.status_code == 400 and r.json()["detail"].startswith("Bad context request: options: Unknown option(s) "
                                                                  "colour for method 'cached+hierarchical'. Valid "
                                                                  "options: top_k, paragraph_k.")
    r = client.post("/api/context", json={"context": "c", "query": "q", "method": "hierarchical",
                                          "options": {"paragraph_k": "many"}})
    assert r.status_code == 400 and "paragraph_k takes int | None" in r.json()["detail"]
    ok = client.post("/api/context", json={"context": "c", "query": "q", "method": "hierarchical",
                                           "options": {"paragraph_k": 1, "top_k": "2"}})
    assert ok.status_code == 200, ok.text
    r = client.post("/api/inspect", json={"prompt": "p", "preset": "logit-lens", "options": {"relation": "capital"}})
    assert r.status_code == 400 and "Valid options: layers, positions, top_k" in r.json()["detail"]
    r = client.post("/api/inspect", json={"prompt": "p", "options": {"top_k": {"nested": 1}}})
    assert r.status_code == 400 and "options.top_k" in r.json()["detail"]


def test_the_page_carries_the_option_descriptions_the_form_is_built_from(client):
    from attrilens.app.methods import form_options

    page = client.get("/").text
    config = json.loads(re.search(r'id="attrilens-config">(.*?)</script>', page, re.S).group(1))
    assert config["choices"]["options"] == json.loads(json.dumps(form_options()))
    assert [o["name"] for o in config["choices"]["options"]["context"]["contextcite"]] == ["n_ablations", "alpha", "seed"]


def test_without_a_model_compute_endpoints_explain_how_to_start():
    client = TestClient(create_app(LensBackend(None)), base_url=BASE)
    r = client.post("/api/context", json={"context": "A b. C d.", "query": "q?", "response": " x"})
    assert r.status_code == 400 and "start the server with --model DIR" in r.json()["detail"]
    r = client.post("/api/inspect", json={"prompt": "Question: where?"})
    assert r.status_code == 400 and "start the server with --model DIR" in r.json()["detail"]
    r = client.post("/api/trace", json={"prompt": "Question: where?", "span": [0, 3]})
    assert r.status_code == 400 and "start the server with --index IDX" in r.json()["detail"]


def test_report_directory_must_exist(tmp_path):
    with pytest.raises(AttrilensError, match="does not exist. Pass the --out directory"):
        load_report(tmp_path / "nope")
    (tmp_path / "a.json").write_text('{"schema": "attrilens/context/v1"}')
    (tmp_path / "b.json").write_text("not json")
    (tmp_path / "c.json").write_text('{"no": "schema"}')
    assert load_report(tmp_path) == [{"schema": "attrilens/context/v1"}]


def test_concurrent_requests_each_get_their_own_result():
    backend = SlowEcho()
    with LiveServer(create_app(backend)) as url:
        def ask(i: int) -> tuple[int, dict]:
            body = {"prompt": f"prompt-{i}", "target": f" target {i}", "span": [1, 7]}
            return i, httpx.post(f"{url}/api/trace", json=body, timeout=30).json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(24)))
    for i, doc in results:
        assert doc["prompt"] == f"prompt-{i}" and doc["target"] == f" target {i}" and doc["proponents"][0]["id"] == f"for-prompt-{i}"
    assert not backend.overlap, "computations must run one at a time on the shared model"


def test_context_through_the_real_lens_and_span_rescoring():
    from attrilens.testing import tiny_lm

    lm = tiny_lm("llama", seed=random.randrange(1000))
    client = TestClient(create_app(LensBackend(None, lm=lm)), base_url=BASE)
    body = {"context": "Alpha likes tea. Beta likes milk. Gamma likes rain.", "query": "Who likes tea?",
            "response": " Alpha likes it"}
    full = client.post("/api/context", json=body)
    assert full.status_code == 200, full.text
    doc = full.json()
    assert doc["schema"] == "attrilens/context/v1" and [s["text"] for s in doc["sources"]] == [
        "Alpha likes tea.", "Beta likes milk.", "Gamma likes rain."]
    part = client.post("/api/context", json={**body, "span": [1, 6]}).json()
    assert part["response"].strip() == "Alpha" and part["cost"]["forward_passes"] == 0
    assert [s["score"] for s in part["sources"]] != [s["score"] for s in doc["sources"]]
    # a method's option from the form reaches the lens: 4 random masks instead of 64, as the Python API gives
    from attrilens.context import ContextAttributor

    cc = client.post("/api/context", json={**body, "method": "contextcite", "options": {"n_ablations": "4"}}).json()
    want = ContextAttributor(lm, method="contextcite", n_ablations=4).attribute(body["context"], body["query"],
                                                                                body["response"]).to_dict()
    default = ContextAttributor(lm, method="contextcite").attribute(body["context"], body["query"], body["response"])
    assert cc["cost"]["forward_passes"] == want["cost"]["forward_passes"] < default.cost.forward_passes
    assert [s["score"] for s in cc["sources"]] == pytest.approx([s["score"] for s in want["sources"]])


def test_serve_verb_checks_its_directories_before_starting(tmp_path):
    import typer
    from typer.testing import CliRunner

    from attrilens.cli.serve import register

    app, bench = typer.Typer(), typer.Typer()
    register(app, bench)
    app.command("noop")(lambda: None)  # two commands, so `serve` is addressed by name as in the real CLI
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--model", str(tmp_path / "missing")])
    assert isinstance(r.exception, AttrilensError) and "is not a directory. Pass an existing directory" in str(r.exception)
    r = runner.invoke(app, ["serve", "--model", str(tmp_path)])
    assert "has no config.json. Pass a Hugging Face model directory" in str(r.exception)
    r = runner.invoke(app, ["serve", "--port", "70000"])
    assert "is not a TCP port" in str(r.exception)


def test_requests_for_another_host_name_are_refused(client):
    for url in ("/", "/api/documents"):
        r = client.get(url, headers={"host": "attacker.example"})
        assert r.status_code == 421 and "Host" in r.json()["detail"]
    r = client.post("/api/trace", json={"prompt": "p"}, headers={"host": "attacker.example:8765"})
    assert r.status_code == 421
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    served_elsewhere = TestClient(create_app(SlowEcho(), host="192.168.1.5"), base_url="http://192.168.1.5:9000")
    assert served_elsewhere.get("/api/health").status_code == 200


def test_cross_site_posts_never_reach_the_model():
    backend = SlowEcho()
    calls = []
    backend.trace = lambda req: calls.append(req) or {"schema": "attrilens/training/v1"}
    client = TestClient(create_app(backend), base_url=BASE)
    r = client.post("/api/trace", content=b'{"prompt": "p"}', headers={"content-type": "text/plain",
                                                                        "origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/api/trace", content=b'{"prompt": "p"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = client.post("/api/trace", json={"prompt": "p"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "Cross-origin" in r.json()["detail"]
    assert calls == []
    assert client.post("/api/trace", json={"prompt": "p"}, headers={"origin": BASE}).status_code == 200
    assert len(calls) == 1


def test_pages_cannot_be_framed_and_deep_json_is_a_400(client):
    for r in (client.get("/"), client.get("/api/health"), client.post("/api/trace", json={"prompt": "p", "span": [0, 1]})):
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 kB: under the default body limit
    r = TestClient(create_app(SlowEcho()), base_url=BASE).post("/api/trace", content=deep, headers=JSON)
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]


def test_live_server_refuses_foreign_hosts_origins_and_deep_json_over_real_sockets():
    """The same checks as above, through uvicorn and a real socket (DNS rebinding sends a foreign Host header)."""
    backend = SlowEcho()
    calls = []
    backend.trace = lambda req: calls.append(req) or {"schema": "attrilens/training/v1"}
    with LiveServer(create_app(backend)) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/health").status_code == 200
        assert http.get("/", headers={"host": "attacker.example"}).status_code == 421
        r = http.post("/api/trace", content=b'{"prompt": "p"}', headers={"content-type": "text/plain",
                                                                      "origin": "http://evil.example"})
        assert r.status_code == 403
        assert http.post("/api/trace", json={"prompt": "p"}, headers={"origin": "http://evil.example"}).status_code == 403
        assert http.post("/api/trace", content=b"[" * 50_000 + b"]" * 50_000, headers=JSON).status_code == 400
        assert calls == []
        assert http.post("/api/trace", json={"prompt": "p"}, headers={"origin": url}).status_code == 200
    assert len(calls) == 1


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc")
def test_load_8_clients_x_200_requests_no_errors_and_flat_memory():
    """A bounded load test: 1,600 requests (results, bad requests, refusals mixed) all answered, and the server
    process's memory after the second half is within 50 MiB of after the first (no per-request growth)."""
    backend = SlowEcho()
    statuses: list[int] = []
    with LiveServer(create_app(backend, report_dir=FIXTURES)) as url:
        def client_run(c: int, n: int) -> list[int]:
            out = []
            with httpx.Client(base_url=url, timeout=60) as http:
                for i in range(n):
                    kind = i % 4
                    if kind == 0:
                        r = http.post("/api/trace", json={"prompt": f"c{c}-{i}", "target": " t", "span": [0, 1]})
                        assert r.status_code != 200 or r.json()["prompt"] == f"c{c}-{i}"
                    elif kind == 1:
                        r = http.post("/api/inspect", json={"prompt": "p", "layer": 99})
                    elif kind == 2:
                        r = http.get("/api/documents")
                    else:
                        r = http.get("/api/health", headers={"host": "attacker.example"})
                    out.append(r.status_code)
            return out

        with ThreadPoolExecutor(8) as pool:
            for half in range(2):
                statuses += [s for run in pool.map(client_run, range(8), [100] * 8) for s in run]
                if half == 0:
                    rss_first = _rss_mib()
        rss_second = _rss_mib()
    assert len(statuses) == 1600 and not [s for s in statuses if s >= 500]
    assert statuses.count(421) == 400 and statuses.count(200) >= 800
    assert rss_second - rss_first < 50, (rss_first, rss_second)
