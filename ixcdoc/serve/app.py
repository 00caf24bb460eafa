"""The FastAPI app: OpenAI-style routes over a backend, as wiring.

Routes: POST /v1/chat/completions (plain and server-sent events), GET /v1/models, GET /health,
and the web page at / with its API under /v1/ixcdoc/ (``webpage.py``).
``guard.Guard`` checks the API key and the body size before any route reads the body; a
body becomes a ``ChatRequest`` in ``chat_request.py``, runs as a job (``events.py``) and is
answered in the typed shapes of ``responses.py``; errors are ``errors.ApiError`` in OpenAI's
JSON shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ixcdoc.errors import IxcdocError
from ixcdoc.serve import responses
from ixcdoc.serve.backend import Backend, ServeBackend
from ixcdoc.serve.body import read_request
from ixcdoc.serve.budget import PixelBudget
from ixcdoc.serve.chat_request import RequestBuilder
from ixcdoc.serve.cors import add_cors
from ixcdoc.serve.engine_backend import EngineBackend
from ixcdoc.serve.errors import ApiError, add_error_handlers, library_error, model_failure
from ixcdoc.serve.events import first_event, submit
from ixcdoc.serve.guard import BODY_TIMEOUT_S, Guard, check_api_key
from ixcdoc.serve.images import FETCH_TIMEOUT_S
from ixcdoc.serve.pages import FETCH_THREADS, MAX_IMAGES, PageLimits
from ixcdoc.serve.webpage import page_router

DECODE_PAGES = 2  # full-size pages decoded at once: the pixel budget is this x --max-pixels


def default_model_name(model: Any) -> str:
    """What /v1/models lists: the hub id, or a local checkpoint folder's name."""
    ident = str(getattr(model, "model_id", None) or "ixcdoc")
    path = Path(ident)
    return path.name if path.is_absolute() or ident.startswith(".") else ident


# ---- the app -----------------------------------------------------------------------------


def create_app(
    model: Any,
    *,
    api_key: str | None = None,
    max_queue: int = 64,
    max_body_mb: float = 20.0,
    max_pixels: int | None = None,
    allow_urls: bool = False,
    model_name: str | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    backend: ServeBackend | None = None,
    max_images: int = MAX_IMAGES,
    pixel_budget: int | None = None,
    fetch_timeout: float = FETCH_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The OpenAI-compatible app over ``model`` (a ``DocModel``); ``backend`` replaces the queue.

    ``batch_size``: requests in flight on the batched engine (None: what memory allows; 1: the
    one-at-a-time ``Backend`` on ``chat``). ``max_tokens``: the largest ``max_tokens`` a request
    may ask for (None: up to the position limit); it bounds each engine slot's positions.
    ``max_images``: image parts per request; ``pixel_budget``: native pixels decoded at once
    across requests (None: ``DECODE_PAGES`` x ``max_pixels``); ``fetch_timeout``: one whole
    http(s) fetch; ``body_timeout``: seconds for a request body to arrive (docs/serve.md).
    ``cors_origins``: browser origins allowed to call the API (``cors.py``; none by default).
    The backend starts with the app's lifespan and stops with it.
    """
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS
    from ixcdoc.sizing import served_positions

    check_api_key(api_key)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if backend is None:
        if batch_size == 1:
            backend = Backend(model, max_queue=max_queue)
        else:
            max_len = served_positions(model.config, max_tokens)
            backend = EngineBackend(model, n_slots=batch_size, max_len=max_len, max_queue=max_queue)
    name = model_name or default_model_name(model)
    max_body = int(max_body_mb * 2**20)
    pixels_limit = max_pixels or DEFAULT_MAX_PIXELS
    limits = PageLimits(max_images, pixels_limit, max_body, allow_urls, fetch_timeout)
    budget = PixelBudget(pixel_budget or DECODE_PAGES * pixels_limit)
    fetcher = ThreadPoolExecutor(FETCH_THREADS, "ixcdoc-fetch") if allow_urls else None
    created = int(time.time())
    cfg = model.config
    builder = RequestBuilder(model, limits, budget, fetcher, max_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(backend.start)  # the engine allocates its KV cache here
        try:
            yield
        finally:
            await asyncio.to_thread(backend.close)
            if fetcher is not None:
                fetcher.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ixcdoc", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.backend = backend

    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Model loaded, device, batch size (requests decoded at once), queue depth."""
        return {
            "status": "ok",
            "model": name,
            "model_loaded": model is not None,
            "device": str(getattr(model, "device", "unknown")),
            "precision": getattr(model, "precision", None),
            "batch_size": backend.n_slots,
            "queue_depth": backend.depth,
            "queued": backend.queued,
            "running": backend.running,
            "max_queue": backend.max_queue,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The one model this server runs."""
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "ixcdoc"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        """OpenAI chat completions: text and image_url parts, plain or streamed."""
        raw = await request.body()  # read by Guard already, within the size and time limits
        try:
            body, conv = await asyncio.to_thread(read_request, raw, cfg.max_length)
            if body.model is not None and body.model != name:  # before any image is decoded
                raise ApiError(
                    404,
                    f"the model {body.model!r} does not exist: this server runs {name!r} "
                    "(GET /v1/models)",
                    code="model_not_found",
                    param="model",
                )
            chat = await builder.build(body, conv)
        except IxcdocError as e:
            raise library_error(e) from None
        run = submit(backend, chat, stream=body.stream)
        head: responses.Head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": name,
        }
        first = await first_event(run, request.receive)
        if first is None:
            return JSONResponse({}, status_code=499)  # nobody reads it: the client left
        if first[0] == "error":
            raise model_failure(first[1])
        if not body.stream:
            return JSONResponse(responses.completion(head, first[1]))
        # Streaming starts only after the first event, so that a request that fails before
        # its first token still gets a real error status instead of a broken stream.
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = responses.completion_stream(run, first, head, model.tokenizer, include_usage)
        return responses.EventStream(chunks, run.handle)

    app.include_router(
        page_router(model, backend, max_pixels=max_pixels, max_tokens=max_tokens, budget=budget)
    )
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, body_timeout=body_timeout)
    add_cors(app, cors_origins)  # added last, so it runs first: preflights need no key
    return app
