"""One run of the web page (transcribe, ask, chart) as a stream of events for the browser.

The run is ``ixcdoc.batch.run`` on the upload, on a thread of its own, with a ``ServedModel``
(``served.py``: generation through the server's backend). What it reports through ``Events``
becomes newline-delimited JSON (``PageRun.stream``):

    {"event": "screening", "pages": 3}                   ask screens pages without text
    {"event": "opened", "pages": 2}                      pages the run will read
    {"event": "started", "page": 1, "tier": 30}          the model starts on a page
    {"event": "text", "page": 1, "delta": "..."}         generated text, as it comes
    {"event": "progress", "tokens": 120, "elapsed_s": 2.1, "done": 0, "total": 2,
     "inflight": [{"page": 1, "tier": 30}], "finished_tokens": 0,
     "draft_tokens": 0, "accepted_tokens": 0}            about every TICK_S seconds
    {"event": "record", "record": {...}}                 a page's record (records.PageRecord)
    {"event": "note", "message": "..."}                  something the user should know
    {"event": "error", "code": "...", "message": "..."}  the run failed (one line)
    {"event": "done", "ok": 2, "failed": 0, "blank": 0, "pages": 2}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ixcdoc.batch import Events
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.serve.served import RunCancelled, RunControl, ServedModel
from ixcdoc.tasks import ASK, CHART, CHART_TABLE, EXTRACT, TaskPreset, parse_hd

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.reading import PageItem
    from ixcdoc.records import PageRecord
    from ixcdoc.serve.backend import ServeBackend
    from ixcdoc.serve.uploads import Upload

TICK_S = 0.25  # progress events at most this often (and text deltas gathered between them)
MAX_QUESTION = 4000  # characters of a question

# What the page offers, by the name it sends: the CLI's presets (chart_table is `chart --table`).
PAGE_TASKS: dict[str, TaskPreset] = {
    "extract": EXTRACT,
    "ask": ASK,
    "chart": CHART,
    "chart_table": CHART_TABLE,
}


def page_job(
    task: str,
    question: str | None = None,
    hd: str | int = "auto",
    max_tokens: int | None = None,
    *,
    speculate: str = "auto",
) -> Job:
    """The ``Job`` the CLI builds for the same command (``ixcdoc ask|extract|chart [--table]``),
    with the server's ``--max-tokens`` as the generation limit when it is lower. Its pages draft
    from their text layer as the CLI's do (``speculate`` "auto")."""
    from ixcdoc.pagerun import Job

    preset = PAGE_TASKS.get(task)
    if preset is None:
        raise UsageError(f"unknown task {task!r}; expected one of {', '.join(PAGE_TASKS)}")
    tier = parse_hd(str(hd))
    limit = max_tokens if max_tokens is not None and max_tokens < preset.max_new_tokens else None
    if preset is ASK:
        q = (question or "").strip()
        if not q:
            raise UsageError("no question given")
        if len(q) > MAX_QUESTION:
            raise UsageError(f"the question is over {MAX_QUESTION} characters")
        # `ixcdoc ask`'s defaults: the question is the prompt; --top-k 1 (the best page).
        return Job(
            ASK,
            prompt=q,
            question=q,
            hd=tier,
            max_new_tokens=limit,
            top_k=1,
            speculate=speculate,
        )
    return Job(preset, preset.prompt, hd=tier, max_new_tokens=limit, speculate=speculate)


class PageEvents(Events):
    """A batch run's events as dicts for the browser, with the counts progress shows.

    Token callbacks run on the backend's thread: ``token(item)`` and then ``text(delta)`` for the
    same token come from one call (``runner.TokenCallback``), so the page a delta belongs to is
    the one the same thread last counted a token for. A delta on a thread that counted none
    (the last characters, flushed when a page ends) is left out: the record has the whole text.
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None], upload: Upload) -> None:
        self.emit = emit
        self.upload = upload
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.tokens = 0
        self.total = 0
        self.done = 0
        # The finished pages' records: their generated tokens, their drafts' tokens and the
        # tokens the model accepted from drafts (speculative decoding).
        self.finished_tokens = 0
        self.drafted = 0
        self.accepted = 0
        self.inflight: dict[int | None, int] = {}

    def note(self, message: str) -> None:
        self.emit({"event": "note", "message": message})

    @contextlib.contextmanager
    def screening(self, source: str, pages: int) -> Iterator[None]:
        self.emit({"event": "screening", "pages": pages})
        yield

    def opened(self, source: str, pages: int, *, single: bool) -> None:
        with self._lock:
            self.total += pages
        self.emit({"event": "opened", "pages": pages})

    def page_started(self, item: PageItem, tier: int) -> None:
        with self._lock:
            self.inflight[item.page] = tier
        self.emit({"event": "started", "page": item.page, "tier": tier})

    def wants_text(self) -> bool:
        return True

    def token(self, item: PageItem) -> None:
        with self._lock:
            self.tokens += 1
        self._local.page = item.page

    def text(self, delta: str) -> None:
        page = getattr(self._local, "page", None)
        if page is not None:
            self.emit({"event": "text", "page": page, "delta": delta})

    def record(self, item: PageItem, rec: PageRecord) -> None:
        self.upload.keep(rec)
        with self._lock:
            self.inflight.pop(rec.page, None)
            self.done += 1
            self.finished_tokens += rec.timings.tokens or 0
            self.drafted += rec.timings.draft_tokens or 0
            self.accepted += rec.timings.accepted_tokens or 0
        self.emit({"event": "record", "record": rec.to_dict()})

    def progress(self) -> dict[str, Any]:
        """The run's counts now: tokens, seconds, pages done of the total, pages in flight, and
        the finished pages' tokens, their drafts' tokens and the tokens accepted from drafts."""
        with self._lock:
            return {
                "event": "progress",
                "tokens": self.tokens,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                "done": self.done,
                "total": self.total,
                "inflight": [{"page": p, "tier": t} for p, t in self.inflight.items()],
                "finished_tokens": self.finished_tokens,
                "draft_tokens": self.drafted,
                "accepted_tokens": self.accepted,
            }


_END = {"event": "_end"}  # the run's thread is finished (never sent)


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")


def _gathered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive text deltas of one page as one event."""
    out: list[dict[str, Any]] = []
    for ev in events:
        last = out[-1] if out else None
        if (
            last is not None
            and ev["event"] == "text"
            and last["event"] == "text"
            and last["page"] == ev["page"]
        ):
            out[-1] = {**last, "delta": last["delta"] + ev["delta"]}
        else:
            out.append(ev)
    return out


class PageRun:
    """``batch.run(job, upload)`` on a thread, through the server's backend, as a stream.

    Create it on the event loop; iterate ``stream()`` once. The run is cancelled (its waiting
    and running backend jobs too) however the stream ends: finished, or the browser gone.
    """

    def __init__(
        self,
        job: Job,
        sources: Sources,
        upload: Upload,
        model: Any,
        backend: ServeBackend,
    ) -> None:
        self.job = job
        self.sources = sources
        self.control = RunControl()
        self._model = ServedModel(model, backend, self.control)
        self._slots = backend.n_slots
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events = PageEvents(self._emit, upload)
        self._thread = threading.Thread(target=self._work, name="ixcdoc-page-run", daemon=True)

    def _emit(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def _work(self) -> None:
        from ixcdoc.batch import run

        try:
            stats = run(
                self.job,
                self.sources,
                model=self._model,
                events=self.events,
                batch_size=self._slots,
            )
            self._emit(
                {
                    "event": "done",
                    "ok": stats.ok,
                    "failed": stats.failed,
                    "blank": stats.blank,
                    "pages": stats.pages,
                }
            )
        except RunCancelled:
            pass
        except IxcdocError as e:
            self._emit({"event": "error", "code": e.code, "message": e.message})
        except Exception as e:  # reported to the page, as the API reports a 500
            message = f"internal error: {type(e).__name__}: {e}"
            self._emit({"event": "error", "code": "error", "message": message})
        finally:
            self._emit(_END)

    async def stream(self) -> AsyncIterator[bytes]:
        """The run's events as JSON lines, ending after ``done`` or ``error``."""
        self._thread.start()
        last = -1.0
        try:
            while True:
                try:
                    first = await asyncio.wait_for(self._queue.get(), TICK_S)
                except asyncio.TimeoutError:
                    yield _line(self.events.progress())
                    last = time.monotonic()
                    continue
                batch = [first]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                for ev in _gathered(batch):
                    if ev is _END:
                        return
                    if ev["event"] in ("done", "error"):  # the last counts come first
                        yield _line(self.events.progress())
                    yield _line(ev)
                if time.monotonic() - last >= TICK_S:
                    yield _line(self.events.progress())
                    last = time.monotonic()
        finally:
            self.control.cancel()
