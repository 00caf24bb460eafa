"""The FastAPI app: OpenAI-style routes over a ``Backend``.

Routes: POST /v1/chat/completions (plain and server-sent events), GET /v1/models, GET /health,
and the web page at / with its API under /v1/ixcdoc/ (``webpage.py``).
``guard.Guard`` checks the API key and the body size before any route reads the body; errors
are ``errors.ApiError`` in OpenAI's JSON shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ixcdoc.errors import IxcdocError
from ixcdoc.serve.backend import Backend, Cancelled, GenRequest, QueueFull, Ticket
from ixcdoc.serve.body import read_request
from ixcdoc.serve.budget import PixelBudget
from ixcdoc.serve.cors import add_cors
from ixcdoc.serve.engine_backend import EngineBackend
from ixcdoc.serve.errors import ApiError, invalid_request, library_error, model_failure
from ixcdoc.serve.guard import BODY_TIMEOUT_S, Guard, check_api_key
from ixcdoc.serve.images import FETCH_TIMEOUT_S
from ixcdoc.serve.pages import (
    FETCH_THREADS,
    MAX_IMAGES,
    PageLimits,
    check_image_tokens,
    close_pages,
    decode_pages,
    open_pages,
    request_tier,
)
from ixcdoc.serve.schema import ChatCompletionRequest, Conversation
from ixcdoc.serve.webpage import page_router

DECODE_PAGES = 2  # full-size pages decoded at once: the pixel budget is this x --max-pixels


# ---- the request's side of the backend seam ------------------------------------------------


@dataclass
class _Run:
    """One submitted job seen from the event loop: its ticket and the events it produces."""

    ticket: Ticket
    events: asyncio.Queue[tuple[str, Any]]  # ("token", id) | ("done", Answer) | ("error", exc)


def _submit(backend: Backend | EngineBackend, request: GenRequest, *, stream: bool) -> _Run:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_token(tid: int) -> bool:
        if stream:
            loop.call_soon_threadsafe(events.put_nowait, ("token", tid))
        return True

    def on_done(answer: Any, error: BaseException | None) -> None:
        event = ("error", error) if error is not None else ("done", answer)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(events.put_nowait, event)

    try:
        ticket = backend.submit(request, on_token, on_done)
    except Cancelled as e:  # the server is shutting down
        raise model_failure(e) from None
    except QueueFull as e:
        raise ApiError(
            429,
            f"the server is busy: {e.queued} requests are waiting (--max-queue); retry later",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(e.retry_after)},
        ) from None
    return _Run(ticket, events)


async def _until_disconnect(receive: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _next_event(run: _Run, gone: asyncio.Future[None]) -> tuple[str, Any] | None:
    """The job's next event, or None (and the job cancelled) once ``gone`` is done."""
    get = asyncio.ensure_future(run.events.get())
    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    run.ticket.cancel()
    return None


# ---- responses ---------------------------------------------------------------------------


FINISH = {"stop_token": "stop", "hook": "stop", "max_new_tokens": "length", "max_length": "length"}


def _usage(answer: Any) -> dict[str, Any]:
    completion = len(answer.token_ids)
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "prompt_tokens_details": {
            "image_tokens": answer.n_image_tokens,
            "text_tokens": max(0, answer.prompt_tokens - answer.n_image_tokens),
            "cached_tokens": 0,
        },
    }


def _extension(answer: Any) -> dict[str, Any]:
    return {
        "hd": answer.hd,
        "grids": [list(g) for g in answer.grids],
        "stop_reason": answer.stop_reason,
        "truncated": answer.truncated,
    }


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


class _EventStream(StreamingResponse):
    """A streaming response that cancels its job however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], ticket: Ticket) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.ticket = ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.cancel()


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
    backend: Backend | EngineBackend | None = None,
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
    from ixcdoc.tasks import ASK
    from ixcdoc.tiling import merged_side

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
    # A client-chosen tier sizes the image buffers: refuse tiers whose crops alone would
    # overflow the prompt (113 for the real model), so no request can ask for a giant image.
    cfg = model.config
    per_crop = merged_side(cfg.tile, cfg.vision.patch_size) ** 2
    max_hd = max(1, cfg.max_length // per_crop)

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

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return invalid_request(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return ApiError(e.status_code, str(e.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        message = f"internal error: {type(e).__name__}: {e}"
        return ApiError(500, message, type="server_error").response()

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

    async def prepare(body: ChatCompletionRequest, conv: Conversation) -> GenRequest:
        """Check the request, read its images' headers, choose the tier, then decode them."""
        default_new = min(ASK.max_new_tokens, max_tokens or ASK.max_new_tokens)
        max_new = body.max_completion_tokens or body.max_tokens or default_new
        if max_tokens is not None and max_new > max_tokens:
            field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(
                400,
                f"{field} {max_new} is over this server's limit of {max_tokens} (--max-tokens)",
                code="invalid_request",
                param=field,
            )
        hd = body.ixcdoc.tier()
        if hd is not None and hd > max_hd:
            raise ApiError(
                400,
                f"ixcdoc.hd {hd} is over {max_hd}: more crops than the model's "
                f"{cfg.max_length} positions can hold",
                code="invalid_request",
                param="ixcdoc.hd",
            )
        pages = await open_pages(conv.image_urls, limits, fetcher)  # headers only
        try:
            hd = hd or request_tier(pages, model, max_new)
            check_image_tokens(pages, hd, cfg)  # before a pixel is decoded
            images = await decode_pages(pages, hd, cfg.tile, budget)
        finally:
            close_pages(pages)
        sampling = body.temperature is not None and body.temperature > 0
        return GenRequest(
            images=images,
            query=conv.query,
            meta_instruction=conv.meta_instruction,
            hd=hd,
            max_new_tokens=max_new,
            do_sample=sampling,
            temperature=body.temperature if sampling else 1.0,
            top_p=body.top_p if body.top_p is not None else GenRequest.top_p,
            seed=body.seed,
        )

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
            gen = await prepare(body, conv)
        except IxcdocError as e:
            raise library_error(e) from None
        run = _submit(backend, gen, stream=body.stream)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": name}
        # Watch for the client leaving while the job waits or runs: its job is cancelled.
        gone = asyncio.ensure_future(_until_disconnect(request.receive))
        try:
            first = await _next_event(run, gone)
        finally:
            gone.cancel()
        if first is None:
            return JSONResponse({}, status_code=499)  # nobody reads it: the client left
        if first[0] == "error":
            raise model_failure(first[1])
        if not body.stream:
            answer = first[1]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": FINISH.get(answer.stop_reason, "stop"),
                "logprobs": None,
            }
            return JSONResponse(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [choice],
                    "usage": _usage(answer),
                    "ixcdoc": _extension(answer),
                }
            )
        # Streaming starts only after the first event, so that a request that fails before
        # its first token still gets a real error status instead of a broken stream.
        tokenizer = model.tokenizer
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return _sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

        async def stream() -> AsyncIterator[bytes]:
            decoder = tokenizer.stream()
            yield chunk({"role": "assistant", "content": ""}, None)
            event: tuple[str, Any] = first
            while True:
                kind, value = event
                if kind == "token":
                    text = decoder.push(value)
                    if text:
                        yield chunk({"content": text}, None)
                elif kind == "error":  # the server stopping it included (503's body)
                    yield _sse(model_failure(value).body)
                    yield _sse("[DONE]")
                    return
                else:
                    tail = decoder.flush()
                    if tail:
                        yield chunk({"content": tail}, None)
                    yield chunk({}, FINISH.get(value.stop_reason, "stop"))
                    if include_usage:
                        yield _sse(
                            {
                                **head,
                                "object": "chat.completion.chunk",
                                "choices": [],
                                "usage": _usage(value),
                                "ixcdoc": _extension(value),
                            }
                        )
                    yield _sse("[DONE]")
                    return
                event = await run.events.get()

        return _EventStream(stream(), run.ticket)

    app.include_router(
        page_router(model, backend, max_pixels=max_pixels, max_tokens=max_tokens, budget=budget)
    )
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, body_timeout=body_timeout)
    add_cors(app, cors_origins)  # added last, so it runs first: preflights need no key
    return app
