"""The Jupyter widget (anywidget): the same ES modules as the report; selections and requests come back to Python."""

from __future__ import annotations

import logging
from typing import Any

import anywidget
import traitlets

from attrilens.errors import AttrilensError
from attrilens.view.bundle import bundle, stylesheet
from attrilens.view.page import clean
from attrilens.view.requests import Backend, can_answer, dispatch


class ResultWidget(anywidget.AnyWidget):
    """Shows result documents; `selection` holds the user's last selection; a `backend` answers new requests."""

    _esm = traitlets.Unicode(bundle("widget.js")).tag(sync=True)
    _css = traitlets.Unicode(stylesheet()).tag(sync=True)
    documents = traitlets.List(traitlets.Dict()).tag(sync=True)
    selection = traitlets.Dict().tag(sync=True)
    request = traitlets.Dict().tag(sync=True)
    response = traitlets.Dict().tag(sync=True)
    can_compute = traitlets.Bool(False).tag(sync=True)
    can_verbatim = traitlets.Bool(False).tag(sync=True)  # the backend has a verbatim index (the view offers spans)

    def __init__(self, documents: list[dict[str, Any]], backend: Backend | None = None, **kwargs: Any):
        super().__init__(documents=clean(list(documents)), can_compute=backend is not None,
                         can_verbatim=backend is not None and can_answer(backend, "verbatim"), **kwargs)
        self._backend = backend

    @traitlets.observe("request")
    def _answer(self, change: dict[str, Any]) -> None:
        req = change["new"] or {}
        if "id" not in req:
            return
        if self._backend is None:
            self.response = {"id": req["id"], "document": None}
            return
        try:
            doc = dispatch(self._backend, str(req.get("kind")), req.get("payload"), check=getattr(self._backend, "check", None))
            self.response = {"id": req["id"], "document": clean(doc)}
        except AttrilensError as exc:
            self.response = {"id": req["id"], "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the front end waits for an answer to every request
            self.response = {"id": req["id"], "error": f"{type(exc).__name__}: {exc}. This is a bug in attrilens "
                                                      "or the model; the traceback is in the notebook's log."}
            logging.getLogger("attrilens").exception("widget request %s failed", req.get("kind"))
