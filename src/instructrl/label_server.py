"""The local web page of `make label`: a FastAPI app over a `TaskStore`, served by uvicorn.

One page (`static/label.html`, no external assets: it works offline) and a small JSON API:

- `GET /api/next?labeler=NAME`: the next task for that person (responses in a per-person shuffled order) and progress;
- `POST /api/submit`: `{task, labeler, order (response indices, best first), flags, note}`;
- `POST /api/skip`: `{task, labeler}`; `POST /api/undo`: `{labeler}` withdraws that person's last submission;
- `GET /api/stats`: agreement between people and with the simulated labeler.

Malformed requests get a 4xx with a message (FastAPI's validation, or the store's `DataError`), a conflicting one a
409; neither writes anything. Requests from other hosts are refused (403) unless the server was started with an
explicit `--host`: the rankings are the user's data.
"""

import ipaddress
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from .errors import DataError
from .labeler import get_labeler
from .labeling import MAX_NOTE, LabelConflict, TaskStore, agreement

PAGE = Path(__file__).resolve().parent / "static" / "label.html"


class SubmitRequest(BaseModel):
    task: str
    labeler: str = Field(min_length=1, max_length=64)
    order: list[int]
    flags: dict[str, list[str]] = Field(default_factory=dict)
    note: str = Field(default="", max_length=MAX_NOTE)


class SkipRequest(BaseModel):
    task: str
    labeler: str = Field(min_length=1, max_length=64)


class UndoRequest(BaseModel):
    labeler: str = Field(min_length=1, max_length=64)


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def create_app(store: TaskStore, allow_remote: bool = False, reference_labeler: str | None = "simulated") -> FastAPI:
    """The ranking app over `store`; `allow_remote` lets other hosts in (only when the user chose `--host`)."""
    app = FastAPI(title="instructrl ranking", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        if not allow_remote and not is_loopback(request.client.host if request.client else None):
            return JSONResponse(
                {"detail": "This ranking server only answers this machine (start it with --host)."}, 403
            )
        return await call_next(request)

    @app.exception_handler(DataError)
    async def bad_request(request: Request, err: DataError):
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(LabelConflict)
    async def conflict(request: Request, err: LabelConflict):
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/next")
    def next_task(labeler: str) -> dict:
        task = store.next_task(labeler)
        return {"task": task, "progress": store.progress()}

    @app.post("/api/submit")
    def submit(body: SubmitRequest) -> dict:
        store.submit(body.task, body.labeler, body.order, body.flags, body.note)
        return {"ok": True, "progress": store.progress()}

    @app.post("/api/skip")
    def skip(body: SkipRequest) -> dict:
        store.skip(body.task, body.labeler)
        return {"ok": True}

    @app.post("/api/undo")
    def undo(body: UndoRequest) -> dict:
        return {"task": store.undo(body.labeler), "progress": store.progress()}

    @app.get("/api/stats")
    def stats() -> dict:
        return agreement(store, get_labeler(reference_labeler) if reference_labeler else None)

    return app
