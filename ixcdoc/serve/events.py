"""A submitted job seen from the event loop: its handle, and its events as an asyncio queue.

The backend calls ``on_token``/``on_done`` on its own thread; they are handed to the loop here,
so the routes read one queue of ``("token", id)``, ``("done", Answer)`` and ``("error", exc)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.serve.backend import Cancelled, Handle, QueueFull, ServeBackend
from ixcdoc.serve.errors import ApiError, model_failure

if TYPE_CHECKING:
    from ixcdoc.engine.request import ChatRequest

Event = tuple[str, Any]  # ("token", id) | ("done", Answer) | ("error", exception)


@dataclass
class Run:
    """One submitted job seen from the event loop: its handle and the events it produces."""

    handle: Handle
    events: asyncio.Queue[Event]


def submit(backend: ServeBackend, request: ChatRequest, *, stream: bool) -> Run:
    """Queue ``request`` on ``backend``; a full queue is a 429, a closing server a 503."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def on_token(tid: int) -> bool:
        if stream:
            loop.call_soon_threadsafe(events.put_nowait, ("token", tid))
        return True

    def on_done(answer: Any, error: BaseException | None) -> None:
        event = ("error", error) if error is not None else ("done", answer)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(events.put_nowait, event)

    try:
        handle = backend.submit(request, on_token, on_done)
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
    return Run(handle, events)


async def until_disconnect(receive: Callable[[], Any]) -> None:
    """Return once the ASGI client has disconnected."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def first_event(run: Run, receive: Callable[[], Any]) -> Event | None:
    """The job's first event, or None (and the job cancelled) if the client leaves first,
    while the job waits or runs."""
    gone = asyncio.ensure_future(until_disconnect(receive))
    try:
        get = asyncio.ensure_future(run.events.get())
        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            return get.result()
        get.cancel()
        run.handle.cancel()
        return None
    finally:
        gone.cancel()
