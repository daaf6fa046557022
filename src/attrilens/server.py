"""The local web app: the views plus a JSON API answering with the same `to_json()` documents the CLI prints.

It binds 127.0.0.1 by default, reads only the model, index and report directory it was started with (no request
names a path), rejects bodies over `max_body` bytes with 413 and computes one request at a time, each with its own
result, so concurrent requests never mix.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from attrilens.context import method_names
from attrilens.errors import AttrilensError
from attrilens.inspect import presets
from attrilens.view.backend import REQUESTS, Backend, LensBackend, dispatch
from attrilens.view.page import render_page

DEFAULT_PORT = 8765
MAX_BODY = 1_000_000  # bytes


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
               report_dir: Path | str | None = None, max_body: int = MAX_BODY) -> FastAPI:
    """The FastAPI app; `backend` defaults to the lenses on `model_dir`/`index_dir` (tests inject a double)."""
    backend = backend if backend is not None else LensBackend(model_dir, index_dir)
    documents = load_report(report_dir)
    compute_lock = threading.Lock()
    # the form offers the registered names (the request models check them again)
    choices = {"methods": method_names(), "presets": presets.PRESETS.names()}
    app = FastAPI(title="attrilens", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        page = render_page(documents, title="attrilens", config={"mode": "server", "api": "api", "choices": choices})
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "model": model_dir is not None, "index": index_dir is not None, "documents": len(documents)}

    @app.get("/api/documents")
    def report() -> list[dict[str, Any]]:
        return documents

    def answer(kind: str, payload: Any) -> JSONResponse:
        try:
            with compute_lock:  # one model, one computation at a time; each request builds its own result
                doc = dispatch(backend, kind, payload)
        except AttrilensError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
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
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(answer, kind, payload)

        handle.__name__ = f"api_{kind}"
        return handle

    for kind in REQUESTS:
        app.add_api_route(f"/api/{kind}", endpoint(kind), methods=["POST"])
    return app


def serve(model_dir: Path | str | None = None, index_dir: Path | str | None = None, report_dir: Path | str | None = None,
          host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Run the web app with uvicorn until interrupted."""
    import sys

    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"warning: serving on {host}: anyone who can reach this address can run the model.\n")
    app = create_app(model_dir=model_dir, index_dir=index_dir, report_dir=report_dir)
    sys.stderr.write(f"attrilens: http://{host}:{port}/\n")
    uvicorn.run(app, host=host, port=port, log_level="warning")
