"""The batch run as a library call: a job over sources into records.

    >>> from ixcdoc.batch import run
    >>> from ixcdoc.inputs import Sources
    >>> from ixcdoc.pagerun import Job
    >>> from ixcdoc.tasks import EXTRACT
    >>> stats = run(Job(EXTRACT, EXTRACT.prompt), Sources(["scans/"]), output="scans.jsonl")

``run`` owns the model loading (none when no page needs it), the resume index of the output
file, the writers, the skip rules and the out-of-memory ladder. It reports what happens through
``Events``, which the CLI's display implements; the default reports nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ixcdoc.pagerun import EnginePages, Job, PageRunner, open_pages
from ixcdoc.reading import Opened, PageItem, TierPlan, ahead, read_pages, through_feeder

if TYPE_CHECKING:
    from ixcdoc.engine.runner import CacheReads
    from ixcdoc.feeder import Feeder
    from ixcdoc.inputs import Sources
    from ixcdoc.outdir import DocumentFiles
    from ixcdoc.pagerun import ChatPages
    from ixcdoc.records import PageRecord, ResumeKey, ResumeState
    from ixcdoc.runtime import DocModel


class Events:
    """What a batch run reports, in order. Subclass and override what you show; each method
    here does nothing."""

    def loading(self, model: str) -> contextlib.AbstractContextManager[Any]:
        """Wraps the model load (a spinner, say)."""
        return contextlib.nullcontext()

    def note(self, message: str) -> None:
        """Something the user should know (a repaired output file)."""

    def screening(self, source: str, pages: int) -> contextlib.AbstractContextManager[Any]:
        """Wraps the model's screening of ``pages`` pages of ``source`` (``ask``'s page
        choice, ``ixcdoc.screening``): a spinner, say."""
        return contextlib.nullcontext()

    def opened(self, source: str, pages: int, *, single: bool) -> None:
        """A document was opened and ``pages`` of its pages will follow. ``single``: this
        is the run's only input and it has one page."""

    def page_started(self, item: PageItem, tier: int) -> None:
        """The model starts on a page (again, one tier lower, after running out of memory)."""

    def wants_text(self) -> bool:
        """True to receive the current page's text as it is generated (``text``)."""
        return False

    def text(self, delta: str) -> None:
        """More generated text of the current page."""

    def token(self, item: PageItem) -> None:
        """The model generated one more token for ``item`` (for progress: counts, rates)."""

    def finished(self, item: PageItem, rec: PageRecord) -> None:
        """A page's record, as soon as it is written to the output file: pages on the batched
        engine finish in any order. ``record`` follows for every page, in input order."""

    def record(self, item: PageItem, rec: PageRecord) -> None:
        """A page's record, already written to every output, in input order."""

    def skipped(self, item: PageItem) -> None:
        """A page done (or failed) in an earlier run, not run again."""


@dataclass
class BatchStats:
    """What a batch did, for the summary line and the exit code."""

    ok: int = 0
    failed: int = 0  # pages (or files) that failed in this run
    skipped: int = 0  # already done in the output file
    skipped_failed: int = 0  # failed in an earlier run and not retried (no --redo-failed)
    blank: int = 0
    pages: int = 0  # pages (and unreadable files) visited
    loaded: bool = False  # the model was loaded
    files_written: int = 0  # document files written to the output folder
    records_path: Path | None = None  # where the records went (also out_dir's own file)
    batch_size: int = 1  # pages in flight at most (the engine's slots)
    cache_reads: CacheReads | None = None  # what the engine's decode steps read of the cache

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.skipped_failed)

    def count(self, rec: PageRecord) -> None:
        """Account for a record written in this run."""
        if rec.status == "ok":
            self.ok += 1
            self.blank += "blank" in rec.flags
        else:
            self.failed += 1


class SkipDone:
    """``skip(sha256, page)``: the (content, page) pairs a resume state has for this job."""

    def __init__(self, pairs: set[tuple[str, int | None]]) -> None:
        self.pairs = frozenset(pairs)

    def __call__(self, sha: str, page: int) -> bool:
        return (sha, page) in self.pairs


def skip_rule(runner: PageRunner, state: ResumeState, redo_failed: bool) -> SkipDone:
    """The pages of ``state`` this job need not run again (failed ones too, unless
    ``redo_failed``): the rule ``run`` and the Ray run (``distributed``) share."""
    probe = runner.key("", "", 0)
    return SkipDone(
        {
            (k.content, k.page)
            for k in [*state.done, *([] if redo_failed else state.failed)]
            if k._replace(content="", page=0) == probe
        }
    )


def _single_input(sources: Sources) -> bool:
    """One argument naming one file (or stdin): not a folder or a pattern."""
    if len(sources.paths) != 1:
        return False
    arg = sources.paths[0]
    return arg == "-" or (os.path.lexists(arg) and not os.path.isdir(arg))


@contextlib.contextmanager
def _outputs(file_writer: Any, json_stream: TextIO | None) -> Iterator[tuple[Any, Any]]:
    """(the output file's writer, the JSON stream's writer), either None; both closed after."""
    from ixcdoc.records import JsonlWriter

    stream = None
    try:
        stream = JsonlWriter(json_stream) if json_stream is not None else None
        yield file_writer, stream
    finally:
        for w in (file_writer, stream):
            if w is not None:
                w.close()


class _InOrder:
    """Hands records on in input order although pages finish in any order (the engine)."""

    def __init__(self, emit: Callable[[PageItem, PageRecord], None]) -> None:
        self.emit = emit
        self._next = 0  # the sequence number to emit next
        self._count = 0
        self._seq: dict[int, int] = {}  # id(item) -> its sequence number
        self._ready: dict[int, tuple[PageItem, PageRecord]] = {}

    def expect(self, item: PageItem) -> None:
        """``item`` will have a record: it takes the next place in the order."""
        self._seq[id(item)] = self._count
        self._count += 1

    def done(self, item: PageItem, rec: PageRecord) -> None:
        """``item`` finished: emit it, and every later one already waiting, when it is next."""
        self._ready[self._seq.pop(id(item))] = (item, rec)
        while self._next in self._ready:
            self.emit(*self._ready.pop(self._next))
            self._next += 1


def open_run_output(output: str | Path | None, events: Events) -> tuple[Any, ResumeState | None]:
    """A run's records output, locked first and held for the whole run, and its resume state
    read under the lock (``records.open_records``: a file, or ``DIR/``, a folder of shards with a
    new shard for this run); a torn last line it cut is one note. (None, None) without one. One
    machine and the Ray driver open their output the same way."""
    from ixcdoc.records import open_records

    if output is None:
        return None, None
    file_writer, state = open_records(output)
    if state.repaired_bytes:
        events.note(
            f"repaired {output}: cut a torn last line ({state.repaired_bytes} bytes) "
            "left by an interrupted run"
        )
    return file_writer, state


def run(
    job: Job,
    sources: Sources,
    *,
    model: DocModel | str | Path | None = None,
    device: str = "auto",
    quant: str = "auto",
    output: str | os.PathLike[str] | None = None,
    json_stream: TextIO | None = None,
    redo_failed: bool = False,
    events: Events | None = None,
    read_ahead: int = 2,
    out_dir: str | os.PathLike[str] | None = None,
    out_format: str = "md",
    batch_size: int | None = None,
    workers: int = 0,
) -> BatchStats:
    """Run ``job`` on every page of ``sources``, one record each; return what happened.

    ``model``: a loaded ``DocModel``, or what ``ixcdoc.load`` takes (a folder, a hub id, None
    for the default) with ``device`` and ``quant``: then it is loaded when the first page
    needs it, and not at all when none does (every input failed or was done before).
    ``output``: a JSONL file to append records to, or a folder (``DIR/``, or one that exists)
    that gets a new shard; pages it already holds for this job are skipped (failed ones too,
    unless ``redo_failed``). ``json_stream``: also write each record
    there as a JSON line. Pages are read ``read_ahead`` pages in front of the model on a worker
    thread (0: on the calling thread). ``out_dir``: also write one file per document there
    (``out_format`` md, txt or json; ``ixcdoc.outdir``), with the records in ``output`` or, if
    none is given, in ``out_dir/.ixcdoc/records.jsonl``. ``batch_size``: pages in flight on the
    batched engine (None: as many as the memory estimate allows; 1: one page at a time with
    ``chat``); records are written as pages finish, which may differ from input order.
    ``workers``: render and HD-transform pages in that many processes (``ixcdoc.feeder``;
    born-digital PDF pages in one pass at their tier's size) instead of the reader thread.
    KeyboardInterrupt propagates after the reader stops; every record written before it is
    complete.
    """
    from ixcdoc.hub import local_revision, model_name

    events = events or Events()
    if isinstance(model, (str, Path)) or model is None:
        runner = PageRunner(job, model_name(model), local_revision(model), device)
        to_load: Any = model
    else:
        runner = PageRunner.loaded(job, model)
        to_load = None
    docs = None
    if out_dir is not None:
        from ixcdoc.outdir import DocumentFiles

        docs = DocumentFiles(out_dir, out_format, sources.paths)
        docs.check_writable()  # a folder that takes no files fails now, before the model loads
        if output is None:
            output = docs.own_records()
        docs.records = Path(output)
    file_writer, state = open_run_output(output, events)
    with _outputs(file_writer, json_stream) as (to_file, to_stream):
        r = _Run(
            runner,
            sources,
            events=events,
            state=state,
            redo_failed=redo_failed,
            docs=docs,
            output=output,
            to_file=to_file,
            to_stream=to_stream,
            load=functools.partial(_load, to_load, device, quant),
            load_label=f"{model_name(to_load)} ({quant}, {device})",
            batch_size=batch_size,
            workers=workers,
        )
        choose = job.choose_pages()
        if job.question is not None and job.top_k is not None:
            # ask: pages without a text layer are screened by the model first (ixcdoc.screening)
            from ixcdoc.screening import ask_choice

            choose = ask_choice(
                job.question,
                job.top_k,
                sources,
                r.model,
                probe=runner.key("", "", 0),
                output=output if state is not None and state.count else None,
                batch_size=batch_size,
                note=events.note,
                busy=events.screening,
            )
        skip = skip_rule(runner, state, redo_failed) if state is not None else None
        pages = read_pages(
            sources,
            choose=choose,
            skip=skip,
            plan=r.plan,
            render=workers == 0,
            drafts=job.drafts,
        )
        items = ahead(pages, depth=read_ahead) if read_ahead > 0 else pages
        try:
            for item in _feeding(items, r.feed) if workers else items:
                r.take(item)
            r.drain()
        finally:
            if hasattr(items, "close"):
                items.close()
            r.close()
    return r.stats


class _Run:
    """One ``run`` in progress: the runner (the job, the model once loaded), where records go,
    what the output already holds, and the pages in flight. ``take`` gets each item the reader
    hands over, in input order; ``finished`` writes each record as its page finishes."""

    def __init__(
        self,
        runner: PageRunner,
        sources: Sources,
        *,
        events: Events,
        state: ResumeState | None,
        redo_failed: bool,
        docs: DocumentFiles | None,
        output: str | os.PathLike[str] | None,
        to_file: Any,
        to_stream: Any,
        load: Callable[[], DocModel],
        load_label: str,
        batch_size: int | None,
        workers: int,
    ) -> None:
        self.runner = runner
        self.sources = sources
        self.events = events
        self.state = state
        self.redo_failed = redo_failed
        self.docs = docs
        self.output = output
        self.to_file = to_file
        self.to_stream = to_stream
        self.load = load
        self.load_label = load_label
        self.batch_size = batch_size
        self.workers = workers
        self.stats = BatchStats()
        self.single = _single_input(sources)
        self.plan = TierPlan()
        if runner.model is not None:
            self.plan.set(runner.tier_for, runner.hd_image)
        self.pages: EnginePages | ChatPages | None = None
        self.closers: list[Callable[[], None]] = []
        self.inflight: set[ResumeKey] = set()  # pages on the engine now
        self.twins: dict[ResumeKey, list[PageItem]] = {}  # identical bytes, waiting for those
        self.earlier = _Earlier(output)
        self.ordered = _InOrder(self.show)

    def model(self) -> DocModel:
        """The model, loaded now when this is the first page (or screening) that needs it."""
        if self.runner.model is None:
            with self.events.loading(self.load_label):
                self.runner.attach(self.load())
            self.plan.set(self.runner.tier_for, self.runner.hd_image)
            self.stats.loaded = True
        assert self.runner.model is not None
        return self.runner.model

    def feed(self, rest: Iterator[Opened | PageItem]) -> Iterator[Opened | PageItem]:
        """The feeder's worker processes render ``rest`` from its first page on; they need the
        model (its tile, the tier rule), loaded now."""
        self.model()
        feeder = _feeder(self.runner, self.workers)
        self.closers.append(feeder.close)
        return through_feeder(
            rest,
            feeder,
            self.runner.tier_for,
            password=self.sources.password,
            max_pixels=self.sources.max_pixels,
        )

    def take(self, item: Opened | PageItem) -> None:
        """A document opened, or a page: skipped, settled without the model, or submitted."""
        runner, events, docs = self.runner, self.events, self.docs
        if isinstance(item, Opened):
            for note in item.notes:  # once per file
                events.note(f"{item.source}: {note}")
            events.opened(item.source, item.pages, single=self.single and item.pages == 1)
            if docs is not None:
                docs.opened(item.source, item.numbers, item.sha256)
            return
        self.stats.pages += 1
        key = runner.key(item.sha256, item.source, item.page)
        skipped = skip_page(item, runner, self.state, self.redo_failed, self.stats)
        if skipped or key in self.inflight:
            if key in self.inflight:  # the same bytes again, already on the engine
                self.stats.skipped += 1
                self.twins.setdefault(key, []).append(item)
            elif docs is not None:
                before = self.earlier.get(key)
                if before is not None:
                    # Its own file too (same text, its own name and page count).
                    docs.add(_as(before, item), fresh=False)
            events.skipped(item)
            return
        self.ordered.expect(item)
        rec = runner.settled(item)
        if rec is None:
            pages = self._pages()
            self.inflight.add(key)
            rec = pages.submit(
                item,
                on_start=events.page_started,
                on_text=events.text if events.wants_text() else None,
                on_count=functools.partial(events.token, item),
            )
        if rec is not None:
            self.finished(item, rec)
        while self.pages is not None and self.pages.busy >= self.pages.capacity:
            self._step()  # keep the engine's slots full, no more

    def drain(self) -> None:
        """Wait for every page still in flight."""
        while self.pages is not None and self.pages.busy:
            self._step()

    def _step(self) -> None:
        assert self.pages is not None
        for item, rec in self.pages.step():
            self.finished(item, rec)

    def _pages(self) -> EnginePages | ChatPages:
        """Where pages run, opened for the first page that needs the model."""
        if self.pages is None:
            self.model()
            self.pages = open_pages(self.runner, self.batch_size)
            self.stats.batch_size = self.pages.capacity
        return self.pages

    def finished(self, item: PageItem, rec: PageRecord) -> None:
        """Write a page's record as it finishes; stdout and the display get it in input
        order."""
        # Written before the state hears of it: a crash never marks an unwritten page done.
        if self.to_file is not None:
            self.to_file.write(rec)
        if self.state is not None:
            self.state.add(rec)
        key = self.runner.key(item.sha256, item.source, item.page)
        self.inflight.discard(key)
        if self.docs is not None:
            self.earlier.remember(rec)
            self.docs.add(rec, fresh=True)
            for twin in self.twins.pop(key, []):  # identical bytes under another name
                self.docs.add(_as(rec, twin), fresh=True)
        self.stats.count(rec)
        self.events.finished(item, rec)
        self.ordered.done(item, rec)

    def show(self, item: PageItem, rec: PageRecord) -> None:
        """A record in input order: to the JSON stream and the display."""
        if self.to_stream is not None:
            self.to_stream.write(rec)
        self.events.record(item, rec)

    def close(self) -> None:
        """Stop the feeder and free the engine; the summary's last counts."""
        for close in self.closers:
            close()
        if self.pages is not None:
            self.pages.close()
            if isinstance(self.pages, EnginePages):
                self.stats.cache_reads = self.pages.engine.cache_reads
        self.stats.files_written = 0 if self.docs is None else self.docs.written
        self.stats.records_path = None if self.output is None else Path(self.output)


def _as(rec: PageRecord, item: PageItem) -> PageRecord:
    """``rec`` (of identical bytes) as the record of ``item``'s document, for its own file."""
    import dataclasses

    if rec.source == item.source:
        return rec
    return dataclasses.replace(rec, source=item.source, page_count=item.page_count)


def _load(model: str | Path | None, device: str, quant: str) -> DocModel:
    """``ixcdoc.load`` (torch is imported here, when the first page needs the model)."""
    from ixcdoc.runtime import load

    return load(model, device=device, quant=quant)


def _feeding(
    items: Iterator[Opened | PageItem],
    start: Callable[[Iterator[Opened | PageItem]], Iterator[Opened | PageItem]],
) -> Iterator[Opened | PageItem]:
    """``items`` as they come until the first page to render, then ``start(rest)`` (the
    feeder renders that page and every later one)."""
    items = iter(items)
    for item in items:
        if isinstance(item, PageItem) and item.info:
            yield from start(itertools.chain([item], items))
            return
        yield item


def _feeder(runner: PageRunner, workers: int) -> Feeder:
    """The page feeder for a loaded model: ``workers`` processes, blank check included, its
    shared-memory slots sized for the largest tier the job can use."""
    from ixcdoc.feeder import Feeder

    assert runner.model is not None
    tile = runner.model.config.tile
    job = runner.job
    max_hd = job.hd if job.hd is not None else job.task.hd_ceiling
    return Feeder(workers, max_tile=tile, max_hd=max_hd, blank_check=True)


class _Earlier:
    """The records of pages that are skipped now: read from the records file on first need
    (only documents whose file must be written need them), plus those written in this run."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = path
        self._from_file: dict[Any, PageRecord] | None = None
        self._this_run: dict[Any, PageRecord] = {}

    def remember(self, rec: PageRecord) -> None:
        from ixcdoc.records import resume_key

        self._this_run[resume_key(rec)] = rec

    def get(self, key: Any) -> PageRecord | None:
        if key in self._this_run:
            return self._this_run[key]
        if self._from_file is None:
            from ixcdoc.records import latest_of, resume_key

            exists = self.path is not None and Path(self.path).exists()
            recs = latest_of(self.path) if exists else []  # type: ignore[arg-type]
            self._from_file = {resume_key(r): r for r in recs}
        return self._from_file.get(key)


def skip_page(
    item: PageItem,
    runner: PageRunner,
    state: ResumeState | None,
    redo_failed: bool,
    stats: BatchStats,
) -> bool:
    """Account for a page that needs no work (done before, failed before, or identical bytes
    done earlier in this run): True when it is skipped. One machine's and the Ray driver's."""
    if item.skipped:
        key = runner.key(item.sha256, item.source, item.page)
        if state is not None and key in state.failed:
            stats.skipped_failed += 1
        else:
            stats.skipped += 1
        return True
    if state is None:
        return False
    if item.error is not None and item.page is None:
        key = runner.key(item.sha256, item.source, None)
        if state.should_skip(key, redo_failed=redo_failed):
            stats.skipped_failed += 1
            return True
    # Identical bytes seen earlier in this run are the same job (docs/output.md).
    if (
        item.page is not None
        and item.sha256 is not None
        and runner.key(item.sha256, item.source, item.page) in state.done
    ):
        stats.skipped += 1
        return True
    return False
