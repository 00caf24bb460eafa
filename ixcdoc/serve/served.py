"""The batch runner's model, served: ``batch.run`` for the web page, over the server's backend.

The page's work (transcribe, ask, chart) runs through ``ixcdoc.batch.run``: the page choice,
tiers, guards and records are the CLI's. Its model is a ``ServedModel``, whose generation goes
through the server's backend (the queue, slots and limits of /v1/chat/completions), never a
second engine or a second copy of the weights.

``ServedModel`` offers what the batch runner uses of a ``DocModel``: its facts (config,
tokenizer, names, GPU budget) and its model calls, each a job on the backend: ``chat`` (one
page, waits for it: the runner's ``--batch-size 1`` path), ``engine`` (a ``BackendEngine``:
pages in flight as backend jobs, collected by ``step``, the runner's engine path) and
``page_relevance`` (ask's screening of pages without a text layer: each page's first answer
token's logits, scored as ``DocModel.page_relevance`` scores them). Any other attribute raises
AttributeError naming it, so that a new model call in the runner fails loudly here instead of
running beside the server's engine thread on the same weights and caches.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.serve.backend import FirstLogits, QueueFull

if TYPE_CHECKING:
    from ixcdoc.answer import Answer
    from ixcdoc.engine.request import ChatRequest
    from ixcdoc.serve.backend import Handle, ServeBackend

# What the batch runner reads of a DocModel that involves no generation (runner.PageRunner,
# sizing.SlotNeed.page): passed through to the real model.
FACTS = frozenset(
    {
        "config",
        "tokenizer",
        "precision",
        "quant",
        "model_id",
        "revision",
        "device",
        "dtype",
        "gpu_budget",
        "release_memory",
    }
)


class RunCancelled(BaseException):
    """The page's client went away: the run stops. A BaseException, so that the runner, which
    turns every Exception into that page's error record, lets it through."""


class ServerBusy(IxcdocError):
    """The backend's queue is full: this page is not run (its record says so)."""

    code = "queue_full"


class RunControl:
    """One run's stop switch and the condition its waits sleep on (set from the event loop)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """True once ``cancel`` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop the run: waiting calls wake up and raise RunCancelled; running jobs stop."""
        with self.cond:
            self._cancelled = True
            self.cond.notify_all()


def check_served(request: ChatRequest) -> ChatRequest:
    """``request`` if the server's queue can run it: one beam (a slot holds one sequence)."""
    if request.num_beams != 1:
        raise UsageError("beam search is not offered on the server's queue; use num_beams=1")
    return request


def _submit(
    backend: ServeBackend,
    control: RunControl,
    request: ChatRequest,
    on_token: Callable[[int], bool] | None,
    on_done: Callable[[Any, BaseException | None], None],
    first_logits: FirstLogits | None = None,
) -> Handle:
    """Queue ``request`` on the backend; its tokens stop once the run is cancelled."""

    def token(tid: int) -> bool:
        if control.cancelled:
            return False
        return on_token is None or on_token(tid) is not False

    try:
        return backend.submit(check_served(request), token, on_done, first_logits)
    except QueueFull as e:
        raise ServerBusy(
            f"the server is busy: {e.queued} requests are waiting (--max-queue); "
            f"retry in {e.retry_after} s"
        ) from None


class _Handle:
    """What the runner reads of an engine handle: ``id``, ``answer``, ``error``."""

    _ids = itertools.count()

    def __init__(self, request: ChatRequest) -> None:
        self.id = next(self._ids)
        self.request = request
        self.answer: Answer | None = None
        self.error: BaseException | None = None


class BackendEngine:
    """The runner's engine interface (``submit``, ``step``, ``n_slots``) over backend jobs.

    ``step`` blocks until at least one job has finished, then runs the finished jobs' ``on_done``
    on the calling (the run's) thread, as ``Engine.step`` does for its own.
    """

    def __init__(self, backend: ServeBackend, control: RunControl, n_slots: int) -> None:
        self.backend = backend
        self.control = control
        self.n_slots = n_slots
        self.cache_reads = None  # the shared engine's reads are the server's, not a run's
        self._done: collections.deque[tuple[_Handle, Callable[[Any], None] | None]] = (
            collections.deque()
        )
        self._jobs: dict[int, Handle] = {}

    def submit(
        self,
        request: ChatRequest,
        *,
        on_token: Callable[[int], bool] | None = None,
        on_done: Callable[[Any], None] | None = None,
        should_stop: Any = None,
        first_logits: FirstLogits | None = None,
    ) -> _Handle:
        """Queue one request as a backend job; ServerBusy when the backend's queue is full.
        ``first_logits``: see ``backend.FirstLogits``."""
        if should_stop is not None:
            raise UsageError("should_stop is not offered on the server's queue")
        handle = _Handle(request)

        def finished(answer: Any, error: BaseException | None) -> None:
            with self.control.cond:
                handle.answer, handle.error = answer, error
                self._done.append((handle, on_done))
                self.control.cond.notify_all()

        self._jobs[handle.id] = _submit(
            self.backend, self.control, request, on_token, finished, first_logits
        )
        return handle

    def step(self) -> None:
        """Wait for finished jobs and report them; RunCancelled (every job cancelled) once the
        run is."""
        with self.control.cond:
            self.control.cond.wait_for(lambda: self._done or self.control.cancelled)
            cancelled = self.control.cancelled
            ready = [] if cancelled else list(self._done)
            self._done.clear()
        if cancelled:
            for job in self._jobs.values():
                job.cancel()
            raise RunCancelled
        for handle, on_done in ready:
            self._jobs.pop(handle.id, None)
            if on_done is not None:
                on_done(handle)


class ServedModel:
    """A loaded ``DocModel`` whose generation goes through the server's backend (see the module
    docstring); ``control`` cancels what it runs."""

    def __init__(self, model: Any, backend: ServeBackend, control: RunControl) -> None:
        self._model = model
        self.backend = backend
        self.control = control

    def free_cache(self) -> None:
        """Keep the cache: the runner frees the engine's KV cache when a run ends, but the
        server's engine owns that cache and goes on."""

    def __getattr__(self, name: str) -> Any:
        if name in FACTS:
            return getattr(self._model, name)
        raise AttributeError(
            f"DocModel.{name} is not routed through the server's queue (ixcdoc.serve.served): "
            "the page can run only what chat and engine offer"
        )

    def chat(
        self,
        images: Any,
        query: str,
        *,
        on_token: Callable[[int], bool] | None = None,
        **options: Any,
    ) -> Answer:
        """``DocModel.chat`` as one backend job: waits for it (RunCancelled once the run is)."""
        from ixcdoc.engine.request import ChatRequest

        request = ChatRequest(list(images), query, **options)
        result: list[tuple[Any, BaseException | None]] = []

        def finished(answer: Any, error: BaseException | None) -> None:
            with self.control.cond:
                result.append((answer, error))
                self.control.cond.notify_all()

        job = _submit(self.backend, self.control, request, on_token, finished)
        with self.control.cond:
            self.control.cond.wait_for(lambda: result or self.control.cancelled)
        if not result:
            job.cancel()
            raise RunCancelled
        answer, error = result[0]
        if error is not None:
            raise error
        return answer

    def page_relevance(
        self, images: Any, question: str, *, hd: int | None = None, max_batch: int | None = None
    ) -> list[float]:
        """``DocModel.page_relevance`` as backend jobs: one per page, at most ``max_batch`` (or
        the backend's slots) at once; the score of each from its first answer token's logits
        (``runtime.relevance``). A page that fails raises its error."""
        from ixcdoc.engine.request import ChatRequest
        from ixcdoc.runtime import answer_ids, relevance
        from ixcdoc.tasks import SCREEN_HD, SCREEN_PROMPT

        yes, no = answer_ids(self.tokenizer)
        query = SCREEN_PROMPT.format(question=question)
        tier = SCREEN_HD if hd is None else hd
        eng = self.engine(n_slots=max_batch or self.backend.n_slots)
        scores: dict[int, float] = {}
        failed: list[BaseException] = []
        left = list(enumerate(images))
        busy = 0

        def finished(handle: _Handle) -> None:
            nonlocal busy
            busy -= 1
            if handle.error is not None:
                failed.append(handle.error)

        while left or busy:
            while left and busy < eng.n_slots:
                i, image = left.pop(0)

                def score(logits: Any, i: int = i) -> None:
                    scores[i] = relevance(logits, yes, no)

                request = ChatRequest([image], query, hd=tier, max_new_tokens=1)
                eng.submit(request, on_done=finished, first_logits=score)
                busy += 1
            eng.step()
        if failed:
            raise failed[0]
        return [scores[i] for i in range(len(images))]

    def engine(self, *, n_slots: int, max_len: int | None = None, **_: Any) -> BackendEngine:
        """Pages in flight as backend jobs: at most the backend's own slots at once (the
        server's engine has its own ``max_len``; a page longer than it fails alone)."""
        return BackendEngine(self.backend, self.control, min(n_slots, self.backend.n_slots))
