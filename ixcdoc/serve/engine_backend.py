"""The server's default backend: requests run concurrently on the batched engine.

``EngineBackend`` offers what ``Backend`` offers (``backend.ServeBackend``: ``submit(request,
on_token, on_done, first_logits) -> Handle``, ``QueueFull``, ``Handle.cancel()``, the counters,
``start``/``close``) but hands up
to ``n_slots`` requests at once to ``DocModel.engine``, whose loop decodes every running
sequence in one forward. Requests past the slots wait in a queue bounded by ``max_queue``; the
engine only ever sees as many requests as it has slots, so a waiting request can still be
withdrawn without reaching the model, and ``queued``/``running`` mean what they say.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from ixcdoc.serve.backend import (
    Cancelled,
    FirstLogits,
    Handle,
    OnDone,
    OnToken,
    QueueFull,
    shutting_down,
    stopped_by_server,
)

if TYPE_CHECKING:
    from ixcdoc.engine.request import ChatRequest


def auto_slots(model: Any, positions: int) -> int:
    """Slots of ``positions`` that fit (``sizing.slots_that_fit``) for requests that fill them,
    each bringing one admission round's vision batch (what the engine caps)."""
    from ixcdoc.sizing import SlotNeed, slots_that_fit
    from ixcdoc.vram import VISION_BATCH_TILES

    need = SlotNeed.filling(model.config, positions, VISION_BATCH_TILES - 1)
    return slots_that_fit(model, need, positions)


def _itemsize(model: Any) -> int:
    # The cache is in the model's dtype: the CPU runs float32 unless loaded in bf16.
    return int(getattr(getattr(model, "dtype", None), "itemsize", 4))


class EngineHandle(Handle):
    """A handle whose ``cancel()`` also withdraws it from the backend's queue at once."""

    def __init__(
        self,
        request: ChatRequest,
        on_token: OnToken,
        on_done: OnDone,
        first_logits: FirstLogits | None = None,
    ) -> None:
        super().__init__(request, on_token, on_done, first_logits)
        self.withdraw: Any = None  # set by the backend: called once on cancel
        self.reported = False  # on_done ran (exactly once, whoever finishes the handle)
        self.scored = False  # its first_logits ran (once, on the prefill's row)

    def cancel(self) -> None:
        """Stop the job: withdrawn if it still waits, stopped at its next token if it runs."""
        super().cancel()
        if self.withdraw is not None:
            self.withdraw(self)


class EngineBackend:
    """Up to ``n_slots`` requests in flight on one ``Engine``; a bounded queue beyond that."""

    def __init__(
        self,
        model: Any,
        *,
        n_slots: int | None = None,
        max_len: int | None = None,
        max_queue: int = 64,
        **engine_options: Any,
    ) -> None:
        """``n_slots`` None: what memory allows (``auto_slots``); ``max_len`` None: the most a
        request can use (``sizing.served_positions``). ``engine_options`` go to
        ``model.engine``."""
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if n_slots is not None and n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        self.model = model
        if max_len is None:
            from ixcdoc.sizing import served_positions

            max_len = served_positions(model.config, None)
        self.max_len = max_len
        self.n_slots = n_slots if n_slots is not None else auto_slots(model, self.max_len)
        self.max_queue = max_queue
        self.engine_options = engine_options
        self.engine: Any = None
        self._lock = threading.Condition()
        self._waiting: collections.deque[EngineHandle] = collections.deque()
        self._inflight: set[EngineHandle] = set()
        self._mean_s = 5.0  # a guess until the first job finishes; feeds Retry-After only
        self._closing = False

    # -- state ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Jobs handed to the engine (at most ``n_slots``)."""
        return len(self._inflight)

    @property
    def depth(self) -> int:
        """Waiting plus running jobs: what /health reports."""
        return self.queued + self.running

    @property
    def cache_bytes(self) -> int:
        """The KV cache ``allocate`` allocates: ``n_slots`` x ``max_len`` positions."""
        from ixcdoc.vram import kv_cache_bytes

        return kv_cache_bytes(self.model.config, self.n_slots * self.max_len, _itemsize(self.model))

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the rounds of slots ahead times a job's time."""
        rounds = max(1, -(-self.depth // self.n_slots))
        return max(1, round(self._mean_s * rounds))

    # -- lifecycle --------------------------------------------------------------------------

    def allocate(self) -> None:
        """Build the engine, which allocates its KV cache, without starting it: ``serve`` calls
        this before it listens, so a cache that cannot fit is one line, not a failed start."""
        if self.engine is None:
            self.engine = self.model.engine(
                n_slots=self.n_slots,
                max_len=self.max_len,
                logits_hook=self._first_logits,
                **self.engine_options,
            )

    def start(self) -> None:
        """Build the engine if ``allocate`` has not, and start its loop thread (once)."""
        self.allocate()
        if not self.engine.started:
            self.engine.start()
        self._pump()

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new and waiting jobs, stop running ones at their next token (each reports
        ``Cancelled``), then stop the engine. Idempotent."""
        with self._lock:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            running = list(self._inflight)
            for handle in running:
                handle.stopped_by_server = True
        for handle in waiting:
            self._report(handle, None, shutting_down())
        for handle in running:
            handle.cancel()
        with self._lock:  # a cancelled sequence ends within one engine step
            self._lock.wait_for(lambda: not self._inflight, timeout=timeout)
            left = list(self._inflight)
            self._inflight.clear()
        if self.engine is not None:
            if self.engine.close(timeout):
                self.model.free_cache()  # the engine's KV cache goes with it
            self.engine = None
        for handle in left:
            self._report(handle, None, shutting_down())

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
        handle = EngineHandle(request, on_token, on_done, first_logits)
        with self._lock:
            if self._closing:
                raise shutting_down()
            # The pump keeps the slots full, so the waiting jobs are those past the slots.
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting), self.retry_after())
            handle.withdraw = self._withdraw
            self._waiting.append(handle)
        self._pump()
        return handle

    # -- internals ----------------------------------------------------------------------------

    def _withdraw(self, handle: EngineHandle) -> None:
        with self._lock:
            try:
                self._waiting.remove(handle)
            except ValueError:
                return  # running (its on_token stops it) or already finished
        self._report(handle, None, Cancelled("cancelled before it started"))

    def _report(self, handle: EngineHandle, answer: Any, error: BaseException | None) -> None:
        with self._lock:
            if handle.reported:
                return
            handle.reported = True
        with contextlib.suppress(Exception):  # a callback bug must not stop the engine's loop
            handle.on_done(answer, error)

    def _first_logits(self, engine_handle: Any, logits: Any) -> None:
        """The engine's logits hook: a job with ``first_logits`` gets the logits of its first
        answer token (the first row the engine shows it); every other row passes."""
        handle = engine_handle.request.tag
        if isinstance(handle, EngineHandle) and not handle.scored:
            handle.scored = True
            if handle.first_logits is not None:
                handle.first_logits(logits)

    def _pump(self) -> None:
        """Hand waiting jobs to the engine while it has free slots."""
        while True:
            with self._lock:
                if (
                    self.engine is None
                    or self._closing
                    or not self._waiting
                    or len(self._inflight) >= self.n_slots
                ):
                    return
                handle = self._waiting.popleft()
                self._inflight.add(handle)
                self._lock.notify_all()
            self._hand_over(handle)

    def _hand_over(self, handle: EngineHandle) -> None:
        started = time.monotonic()

        def on_token(tid: int) -> bool:
            if handle.cancelled:
                return False
            return handle.on_token(tid) is not False and not handle.cancelled

        def on_done(engine_handle: Any) -> None:
            self._finished(handle, started, engine_handle.answer, engine_handle.error)

        try:
            self.engine.submit(
                dataclasses.replace(handle.request, tag=handle),  # the engine's handle finds it
                on_token=on_token,
                on_done=on_done,
            )
        except BaseException as e:  # an invalid request fails alone, before the engine sees it
            self._finished(handle, started, None, e)

    def _finished(
        self, handle: EngineHandle, started: float, answer: Any, error: BaseException | None
    ) -> None:
        with self._lock:
            self._inflight.discard(handle)
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)
            self._lock.notify_all()
        if stopped_by_server(handle, answer):
            answer, error = None, shutting_down(len(answer.token_ids))
        self._report(handle, answer, error)
        self._pump()  # its slot is free: the next waiting job takes it
