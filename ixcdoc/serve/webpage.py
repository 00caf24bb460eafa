"""The web page of ``ixcdoc serve`` (docs/serve.md, "In a browser"): routes for the page at
``/``, its assets, and the API it calls under ``/v1/ixcdoc/``, where ``guard.Guard`` asks for
the key and bounds the body as for every ``/v1`` route.

    GET    /                                      the page (static)
    GET    /web/NAME                              its script and styles (ixcdoc/serve/web/)
    POST   /v1/ixcdoc/documents?name=NAME         the body's bytes opened as a document
    GET    /v1/ixcdoc/documents/ID                that document
    DELETE /v1/ixcdoc/documents/ID                forget it
    GET    /v1/ixcdoc/documents/ID/plan?task=&hd= its pages planned for the model served
    GET    /v1/ixcdoc/documents/ID/pages/N.jpg    page N as a JPEG (?max=SIDE)
    POST   /v1/ixcdoc/documents/ID/runs           {task, question, pages, hd, speculate}: a run,
                                                  streamed as JSON lines (webrun.py)
    GET    /v1/ixcdoc/documents/ID/records        ?task=&format=jsonl|md: its latest records

Nothing the page needs comes from elsewhere; the Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.serve.errors import ApiError, library_error
from ixcdoc.serve.uploads import UploadStore, open_upload, upload_name
from ixcdoc.serve.webrun import MAX_QUESTION, PageRun, page_job

if TYPE_CHECKING:
    from ixcdoc.pagerun import Job
    from ixcdoc.serve.backend import ServeBackend
    from ixcdoc.serve.budget import PixelBudget
    from ixcdoc.serve.uploads import Upload

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PASSWORD_HEADER = "X-Ixcdoc-Password"  # an encrypted PDF's password, for its upload
IMAGE_SIDES = (64, 2400)  # the smallest and largest ?max= for a page image
RENDERS = 2  # page images rendered at once


class RunBody(BaseModel):
    """What the page asks the model to do with a document."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["extract", "ask", "chart", "chart_table"]
    question: str | None = Field(default=None, max_length=MAX_QUESTION)
    pages: str | None = Field(default=None, max_length=200)
    hd: str | int = "auto"
    speculate: str = "auto"  # "auto" | "off", as --speculate


def _input_error(e: IxcdocError) -> ApiError:
    """A library error about an upload as the API's error (413 for too_large), no ``param``."""
    err = library_error(e)
    err.body["error"]["param"] = None
    return err


def _attachment(name: str) -> str:
    """A Content-Disposition that keeps any file name (RFC 6266, UTF-8 form)."""
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(name)}"


def page_router(
    model: Any,
    backend: ServeBackend,
    *,
    max_pixels: int | None,
    max_tokens: int | None,
    store: UploadStore | None = None,
    budget: PixelBudget | None = None,
) -> APIRouter:
    """The page's routes over the server's ``model`` and ``backend`` (see the module docstring).

    ``max_pixels``: the server's pixel limit for uploads; ``max_tokens``: its ``--max-tokens``,
    which also bounds what a run generates per page; ``budget``: the decoded pixels the server
    holds at once (the API's requests and the page's images share it; None: none but
    ``RENDERS`` renders at once).
    """
    from ixcdoc.viewer import web_asset

    store = store or UploadStore()
    router = APIRouter()
    index = web_asset("index.html").encode("utf-8")
    assets = {name: web_asset(name).encode("utf-8") for name in ASSETS}
    renders = asyncio.Semaphore(RENDERS)
    runs: set[PageRun] = set()
    headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"}

    def upload_or_404(doc_id: str) -> Upload:
        upload = store.get(doc_id)
        if upload is None:
            raise ApiError(
                404,
                f"no document {doc_id!r} on this server (it keeps the last {store.max_uploads} "
                "opened): open the file again",
                code="document_not_found",
            )
        return upload

    def job_for(task: str, question: str | None, hd: str | int, speculate: str = "auto") -> Job:
        try:
            return page_job(task, question, hd, max_tokens, speculate=speculate)
        except IxcdocError as e:
            raise ApiError(400, e.message, code="invalid_request") from None

    def task_job(task: str, hd: str | int = "auto") -> Job:
        """The job of a task whatever its question (a plan or a download needs none)."""
        return job_for(task, "?" if task == "ask" else None, hd)

    @router.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/web/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            raise ApiError(404, f"no asset {name!r}", code="not_found")
        return Response(assets[name], media_type=ASSETS[name], headers=headers)

    @router.post("/v1/ixcdoc/documents")
    async def open_document(request: Request, name: str | None = None) -> dict[str, Any]:
        """Open the body's bytes (a PDF or an image) as a document; returns its id and pages.
        An encrypted PDF's password comes in the ``X-Ixcdoc-Password`` header (never the URL)."""
        data = await request.body()
        shown = upload_name(name)
        password = request.headers.get(PASSWORD_HEADER)
        try:
            if not data:
                raise InputError(shown, "nothing to read (0 bytes)", code="empty")
            upload = await asyncio.to_thread(
                open_upload, shown, data, max_pixels=max_pixels, password=password
            )
        except IxcdocError as e:
            raise _input_error(e) from None
        store.add(upload)
        return upload.info()

    @router.get("/v1/ixcdoc/documents/{doc_id}")
    async def document(doc_id: str) -> dict[str, Any]:
        """A document opened earlier."""
        return upload_or_404(doc_id).info()

    @router.delete("/v1/ixcdoc/documents/{doc_id}")
    async def forget(doc_id: str) -> dict[str, Any]:
        """Forget a document (its bytes and records)."""
        upload_or_404(doc_id)
        store.remove(doc_id)
        return {"id": doc_id, "deleted": True}

    @router.get("/v1/ixcdoc/documents/{doc_id}/plan")
    async def plan(doc_id: str, task: str = "extract", hd: str = "auto") -> dict[str, Any]:
        """``ixcdoc plan`` for the document, for the model this server runs."""
        upload = upload_or_404(doc_id)
        job = task_job(task, hd)
        rows = await asyncio.to_thread(plan_rows, model, upload, job)
        return {"task": task, "hd": job.hd_label, "rows": rows}

    @router.get("/v1/ixcdoc/documents/{doc_id}/pages/{page}.jpg")
    async def page_image(
        doc_id: str,
        page: int,
        side: int = Query(1600, alias="max", ge=IMAGE_SIDES[0], le=IMAGE_SIDES[1]),
    ) -> Response:
        """Page ``page`` as a JPEG, at most ``max`` pixels a side."""
        upload = upload_or_404(doc_id)
        try:
            async with renders:
                pixels = await asyncio.to_thread(store.pixels, upload, page, side)
                async with budget.hold(pixels) if budget else contextlib.nullcontext():
                    jpeg = await asyncio.to_thread(store.image, upload, page, side)
        except IxcdocError as e:
            raise _input_error(e) from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @router.post("/v1/ixcdoc/documents/{doc_id}/runs", response_model=None)
    async def start_run(doc_id: str, body: RunBody) -> StreamingResponse:
        """Run a task on the document's pages; the events stream back as JSON lines."""
        from ixcdoc.inputs import select_pages

        upload = upload_or_404(doc_id)
        job = job_for(body.task, body.question, body.hd, body.speculate)
        try:
            select_pages(body.pages, upload.page_count, source=upload.name)
        except IxcdocError as e:
            raise _input_error(e) from None
        if backend.queued >= backend.max_queue or len(runs) >= backend.max_queue:
            waiting = max(backend.queued, len(runs))
            raise ApiError(
                429,
                f"the server is busy: {waiting} requests are waiting (--max-queue); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(backend.retry_after())},
            )
        run = PageRun(job, upload.sources(body.pages), upload, model, backend)
        runs.add(run)
        return _RunStream(run, runs)

    @router.get("/v1/ixcdoc/documents/{doc_id}/records", response_model=None)
    async def records(
        doc_id: str, task: str = "extract", format: Literal["jsonl", "md"] = "jsonl"
    ) -> Response:
        """The document's latest records of a task: JSON lines as ``extract -o`` writes them,
        or Markdown as ``extract --out-dir`` does."""
        from ixcdoc.outdir import render_document

        upload = upload_or_404(doc_id)
        job = task_job(task)
        recs = upload.latest(job.task.name, None if task == "ask" else job.prompt)
        if not recs:
            raise ApiError(404, f"{upload.name}: no {task} records yet", code="no_records")
        stem = upload.name.rsplit(".", 1)[0] if "." in upload.name[1:] else upload.name
        if format == "md":
            text, media = render_document("md", recs), "text/markdown; charset=utf-8"
        else:
            text = "".join(r.to_json() + "\n" for r in recs)
            media = "application/x-ndjson; charset=utf-8"
        disposition = _attachment(f"{stem}.{format}")
        return Response(text, media_type=media, headers={"Content-Disposition": disposition})

    return router


class _RunStream(StreamingResponse):
    """A run's events; the run is cancelled and forgotten however the response ends."""

    def __init__(self, run: PageRun, runs: set[PageRun]) -> None:
        super().__init__(
            run.stream(),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.run = run
        self.runs = runs

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.control.cancel()
            self.runs.discard(self.run)


def plan_rows(model: Any, upload: Upload, job: Job) -> list[dict[str, Any]]:
    """``planning.plan_pages`` rows for the upload, for the model served (its geometry, GPU and
    precision, so the tier is the one its runs choose), each with the padding of its HD image.
    """
    from ixcdoc.planning import plan_pages
    from ixcdoc.tiling import hd_geometry

    cfg = model.config
    out: list[dict[str, Any]] = []
    for row in plan_pages(
        upload.sources(),
        task=job.task,
        hd=job.hd,
        max_new_tokens=job.max_new_tokens,
        cfg=cfg,
        gpu=model.gpu_budget(),
        quant=str(model.precision),
    ):
        if isinstance(row, IxcdocError):
            error = {"code": row.code, "message": row.message}
            out.append({"page": getattr(row, "page", None), "status": "error", "error": error})
            continue
        g = hd_geometry(*row["native_size"], row["tier"], cfg.tile)
        row["tile"] = cfg.tile
        row["pad"] = [g.pad_top, g.pad_bottom, g.pad_left, g.pad_right]
        out.append(row)
    return out
