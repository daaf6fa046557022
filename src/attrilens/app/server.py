"""The local web app: the views plus a JSON API answering with the same `to_json()` documents the CLI prints.

It binds 127.0.0.1 by default, reads only the model, indexes and report directory it was started with (no request
names a path), rejects bodies over `max_body` bytes with 413 and computes one request at a time, each with its own
result, so concurrent requests never mix. It answers only requests addressed to its own host names (DNS
rebinding) and refuses POSTs that are not `application/json` or come from another origin (cross-site request
forgery: a page elsewhere cannot make the browser run the model), and no other site may frame it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from attrilens.app.backend import LensBackend, check_request
from attrilens.app.methods import form_options
from attrilens.context import method_names
from attrilens.errors import AttrilensError
from attrilens.patchscopes import presets
from attrilens.view.page import render_page
from attrilens.view.requests import REQUESTS, Backend, can_answer, dispatch

DEFAULT_PORT = 8765
MAX_BODY = 1_000_000  # bytes
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def host_name(host_header: str) -> str:
    """The host name of a Host header ("127.0.0.1:8765" → "127.0.0.1", "[::1]:80" → "::1"), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(request: Request, hosts: frozenset[str]) -> JSONResponse | None:
    """Why this request must not be served (a response to send instead), or None when it may be."""
    if host_name(request.headers.get("host", "")) not in hosts:
        return JSONResponse({"detail": "Unknown Host header. Open the app at the address it was started on "
                                       "(e.g. http://127.0.0.1:8765/)."}, status_code=421)
    origin = request.headers.get("origin")
    if origin is not None and origin not in (f"http://{request.headers['host']}", f"https://{request.headers['host']}"):
        return JSONResponse({"detail": "Cross-origin requests are refused. Use the app's own page."}, status_code=403)
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return JSONResponse({"detail": "POST bodies must be application/json. Send JSON with that "
                                           "Content-Type."}, status_code=415)
    return None


def load_report(report_dir: Path | str | None) -> list[dict[str, Any]]:
    """The result documents (*.json with a "schema") in the report directory the server was started with."""
    if report_dir is None:
        return []
    path = Path(report_dir)
    if not path.is_dir():
        raise AttrilensError(f"Report directory {path} does not exist. Pass the --out directory of `attrilens demo`.")
    docs = []
    for file in sorted(path.glob("*.json")):
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for d in doc if isinstance(doc, list) else [doc]:
            if isinstance(d, dict) and isinstance(d.get("schema"), str) and d["schema"].startswith("attrilens/"):
                docs.append(d)
    return docs


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it exceeds `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(backend: Backend | None = None, *, model_dir: Path | str | None = None, index_dir: Path | str | None = None,
               report_dir: Path | str | None = None, max_body: int = MAX_BODY, host: str = "127.0.0.1",
               verbatim_dir: Path | str | None = None) -> FastAPI:
    """The FastAPI app; `backend` defaults to the lenses on `model_dir`/`index_dir`/`verbatim_dir` (tests inject a
    double).

    Requests must name `host` or a loopback name in their Host header."""
    backend = backend if backend is not None else LensBackend(model_dir, index_dir, verbatim_dir=verbatim_dir)
    documents = load_report(report_dir)
    compute_lock = threading.Lock()
    # the form offers the registered names, and builds each method's option fields from their description
    # (check_request checks them again)
    choices = {"methods": method_names(), "presets": presets.PRESETS.names(), "verbatim": can_answer(backend, "verbatim"),
               "options": form_options()}
    if index_dir is not None:  # the curation panel's command names the index
        choices["index"] = str(Path(index_dir).resolve())
    app = FastAPI(title="attrilens", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = frozenset({*LOCAL_HOSTS, host_name(host)})

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = refusal(request, hosts) or await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        page = render_page(documents, title="attrilens", config={"mode": "server", "api": "api", "choices": choices})
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "model": model_dir is not None, "index": index_dir is not None, "documents": len(documents),
                "verbatim": choices["verbatim"]}

    @app.get("/api/documents")
    def report() -> list[dict[str, Any]]:
        return documents

    def answer(kind: str, payload: Any) -> JSONResponse:
        try:
            with compute_lock:  # one model, one computation at a time; each request builds its own result
                doc = dispatch(backend, kind, payload, check=check_request)
        except AttrilensError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except RecursionError:
            return JSONResponse({"detail": "The request is nested too deeply. Send a flat JSON object."}, status_code=400)
        return JSONResponse(doc)

    def endpoint(kind: str):
        async def handle(request: Request) -> JSONResponse:
            body = await _read_body(request, max_body)
            if body is None:
                return JSONResponse({"detail": f"Request body over {max_body} bytes. Send a shorter text."}, status_code=413)
            try:
                payload = json.loads(body or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return JSONResponse({"detail": f"Body is not JSON ({exc}). Send a JSON object."}, status_code=400)
            except RecursionError:
                return JSONResponse({"detail": "The JSON body is nested too deeply. Send a flat JSON object."},
                                    status_code=400)
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(answer, kind, payload)

        handle.__name__ = f"api_{kind}"
        return handle

    for kind in REQUESTS:
        app.add_api_route(f"/api/{kind}", endpoint(kind), methods=["POST"])
    return app


def serve(model_dir: Path | str | None = None, index_dir: Path | str | None = None, report_dir: Path | str | None = None,
          host: str = "127.0.0.1", port: int = DEFAULT_PORT, verbatim_dir: Path | str | None = None) -> None:
    """Run the web app with uvicorn until interrupted."""
    import sys

    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"warning: serving on {host}: anyone who can reach this address can run the model.\n")
    app = create_app(model_dir=model_dir, index_dir=index_dir, report_dir=report_dir, host=host, verbatim_dir=verbatim_dir)
    sys.stderr.write(f"attrilens: http://{host}:{port}/\n")
    uvicorn.run(app, host=host, port=port, log_level="warning")
