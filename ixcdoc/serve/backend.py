"""The seam between HTTP and the model: one worker thread owns the model, jobs queue for it.

The server calls only ``submit(request, on_token, on_done, first_logits=None) -> Handle`` (and
reads ``depth``/``queued``/``running`` for /health and 429s); ``ServeBackend`` is that protocol.
``request`` is the engine's ``ChatRequest``, the one request value. ``on_token(id) -> bool``
and ``on_done(answer, error)`` are called on the worker thread; the caller hands them over to
its own event loop. ``engine_backend.EngineBackend`` (the server's default) offers the same
on the batched engine; this class stays for ``--batch-size 1``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ixcdoc.engine.request import ChatRequest

OnToken = Callable[[int], bool]  # False stops the generation after that token
OnDone = Callable[[Any, "BaseException | None"], None]  # (Answer or None, error or None)
# Called once, on the backend's thread, with the fp32 logits [V] of the first answer token (the
# prompt's last position): how ask's screening scores a page (runtime.relevance). On the
# one-at-a-time Backend such a job is scored, not answered (its answer is None).
FirstLogits = Callable[[Any], None]


class QueueFull(Exception):
    """The backend holds ``max_queue`` waiting jobs already; ``retry_after`` is in seconds."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"{queued} requests are already waiting")
        self.queued = queued
        self.retry_after = retry_after


class Cancelled(Exception):
    """The job did not run to its end: cancelled before it started, or the server stopped it."""


def shutting_down(tokens: int | None = None) -> Cancelled:
    """What a job the server's shutdown refuses (``tokens`` None) or stops reports."""
    if tokens is None:
        return Cancelled("the server is shutting down: the request was not run")
    return Cancelled(f"the server is shutting down: the request was stopped after {tokens} tokens")


def stopped_by_server(handle: Handle, answer: Any) -> bool:
    """True when ``answer`` ended because the server cancelled its running handle."""
    from ixcdoc.generate import CALLBACK

    return handle.stopped_by_server and answer is not None and answer.stop_reason == CALLBACK


@dataclass(eq=False)  # identity, not value: handles are kept in sets and removed from queues
class Handle:
    """A submitted job, the engine's word for it (``ixcdoc.engine.Handle``) with what a queue in
    front of the engine adds: the callbacks, and ``cancel()``, which stops it at its next token
    or before it starts."""

    request: ChatRequest
    on_token: OnToken
    on_done: OnDone
    first_logits: FirstLogits | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    stopped_by_server: bool = False  # cancelled by the server's shutdown, not by its client

    def cancel(self) -> None:
        """Stop the job (idempotent; no effect once it has finished)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()


_STOP = object()  # sentinel that ends the worker


class ServeBackend(Protocol):
    """What the server's routes use of a backend: ``Backend`` and ``EngineBackend`` are two."""

    n_slots: int  # jobs on the model at once: what /health reports as the batch size
    max_queue: int

    @property
    def queued(self) -> int:
        """Jobs waiting for the model."""
        ...

    @property
    def running(self) -> int:
        """Jobs on the model now."""
        ...

    @property
    def depth(self) -> int:
        """Waiting plus running jobs: what /health reports."""
        ...

    def retry_after(self) -> int:
        """Seconds a refused client should wait."""
        ...

    def start(self) -> None:
        """Start taking jobs."""

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new jobs, stop the others (each reports ``Cancelled``); idempotent."""

    def submit(
        self,
        request: ChatRequest,
        on_token: OnToken,
        on_done: OnDone,
        first_logits: FirstLogits | None = None,
    ) -> Handle:
        """Queue a job; raises QueueFull when saturated, Cancelled once shutting down."""
        ...


def _report(handle: Handle, answer: Any, error: BaseException | None) -> None:
    with contextlib.suppress(Exception):  # a callback bug must not kill the only worker
        handle.on_done(answer, error)


class Backend:
    """Runs jobs one at a time on a single worker thread, so the model never sees two forwards."""

    n_slots = 1  # jobs on the model at once: what /health reports as the batch size

    def __init__(self, model: Any, *, max_queue: int = 64) -> None:
        """``model`` has ``DocModel.chat``'s interface; ``max_queue`` bounds waiting jobs."""
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        self.max_queue = max_queue
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0
        self._mean_s = 5.0  # a guess until the first job finishes; feeds Retry-After only
        self._thread: threading.Thread | None = None
        self._current: Handle | None = None
        self._closing = False

    # -- state ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return self._queued

    @property
    def running(self) -> int:
        """Jobs on the model now (0 or 1)."""
        return self._running

    @property
    def depth(self) -> int:
        """Waiting plus running jobs: what /health reports."""
        return self._queued + self._running

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead times the mean job time."""
        return max(1, round(self._mean_s * max(1, self.depth)))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ixcdoc-serve", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new and waiting jobs, stop the running one at its next token (each reports
        ``Cancelled``), stop the worker and wait for it (at most ``timeout`` s). Idempotent."""
        with self._lock:
            self._closing = True
            current = self._current
            if current is not None:
                current.stopped_by_server = True
        if current is not None:
            current.cancel()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Handle):
                item.cancel()
                self._finish(item, None, shutting_down())
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the seam -----------------------------------------------------------------------------

    def submit(
        self,
        request: ChatRequest,
        on_token: OnToken,
        on_done: OnDone,
        first_logits: FirstLogits | None = None,
    ) -> Handle:
        """Queue a job; raises QueueFull when ``max_queue`` jobs are already waiting, and
        Cancelled once the server is shutting down."""
        with self._lock:
            if self._closing:
                raise shutting_down()
            if self._queued >= self.max_queue:
                raise QueueFull(self._queued, self.retry_after())
            self._queued += 1
        handle = Handle(request, on_token, on_done, first_logits)
        self._queue.put(handle)
        return handle

    # -- worker -------------------------------------------------------------------------------

    def _finish(self, handle: Handle, answer: Any, error: BaseException | None) -> None:
        """A job leaves the queue without running."""
        with self._lock:
            self._queued -= 1
        _report(handle, answer, error)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            handle: Handle = item
            if handle.cancelled:
                self._finish(handle, None, Cancelled("cancelled before it started"))
                continue
            with self._lock:
                self._queued -= 1
                self._running += 1
                self._current = handle
            answer, error = None, None
            t0 = time.monotonic()
            try:
                answer = self._run(handle)
            except BaseException as e:  # reported to the request; the worker must live on
                error = e
            finally:
                with self._lock:
                    self._running -= 1
                    self._current = None
                    self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - t0)
            if stopped_by_server(handle, answer):
                answer, error = None, shutting_down(len(answer.token_ids))
            _report(handle, answer, error)

    def _run(self, handle: Handle) -> Any:
        r = handle.request
        if handle.first_logits is not None:
            logits = self.model.prompt_logits(
                list(r.images), r.query, hd=r.hd, meta_instruction=r.meta_instruction
            )
            handle.first_logits(logits[-1])
            return None

        def on_token(tid: int) -> bool:
            if handle.cancelled:
                return False
            return handle.on_token(tid) is not False and not handle.cancelled

        return self.model.chat(list(r.images), r.query, on_token=on_token, **r.chat_options())
