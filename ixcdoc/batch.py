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

from ixcdoc.pagerun import Job, PageRunner
from ixcdoc.reading import Opened, PageItem, TierPlan, ahead, read_pages, through_feeder

if TYPE_CHECKING:
    from ixcdoc.feeder import Feeder
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import EnginePages
    from ixcdoc.records import PageRecord, ResumeState
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


def skip_rule(runner: PageRunner, job: Job, state: ResumeState, redo_failed: bool) -> SkipDone:
    """The pages of ``state`` this job need not run again (failed ones too, unless
    ``redo_failed``): the rule ``run`` and the Ray run (``distributed``) share."""
    probe = runner.key(job, "", "", 0)
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
    from ixcdoc.records import open_records

    events = events or Events()
    if isinstance(model, (str, Path)) or model is None:
        from ixcdoc.hub import local_revision, model_name

        runner = PageRunner(model_name(model), local_revision(model), device)
        to_load: Any = model
    else:
        runner = PageRunner.loaded(model)
        to_load = None
    docs = None
    if out_dir is not None:
        from ixcdoc.outdir import DocumentFiles

        docs = DocumentFiles(out_dir, out_format, sources.paths)
        docs.prepare()  # a folder that takes no files fails now, before the model loads
        if output is None:
            output = docs.own_records()
        docs.records = Path(output)
    state = file_writer = None
    if output is not None:
        # Locked first and held for the whole run; the resume state is read under the lock.
        # ``DIR/``: a folder of shards, as the Ray run writes (records.open_records).
        file_writer, state = open_records(output)
        if state.repaired_bytes:
            events.note(
                f"repaired {output}: cut a torn last line ({state.repaired_bytes} bytes) "
                "left by an interrupted run"
            )
    plan = TierPlan()
    if runner.model is not None:
        plan.set(lambda info: runner.tier_for(job, info), runner.hd_image)

    def load() -> None:
        from ixcdoc.hub import model_name as name_of
        from ixcdoc.runtime import load as load_model

        with events.loading(f"{name_of(to_load)} ({quant}, {device})"):
            dm = load_model(to_load, device=device, quant=quant)
        runner.attach(dm)
        plan.set(lambda info: runner.tier_for(job, info), runner.hd_image)

    skip = skip_rule(runner, job, state, redo_failed) if state is not None else None
    stats = BatchStats()
    choose = job.choose_pages()
    if job.question is not None and job.top_k is not None:
        # ask: pages without a text layer are screened by the model first (ixcdoc.screening)
        from ixcdoc.screening import ask_choice

        def screening_model() -> DocModel:
            if runner.model is None:
                load()
                stats.loaded = True
            assert runner.model is not None
            return runner.model

        choose = ask_choice(
            job.question,
            job.top_k,
            sources,
            screening_model,
            probe=runner.key(job, "", "", 0),
            output=output if state is not None and state.count else None,
            batch_size=batch_size,
            note=events.note,
            busy=events.screening,
        )
    pages = read_pages(sources, choose=choose, skip=skip, plan=plan, render=workers == 0)
    items = ahead(pages, depth=read_ahead) if read_ahead > 0 else pages
    closers: list[Callable[[], None]] = []
    single_arg = _single_input(sources)
    engine: EnginePages | None = None
    inflight: set[Any] = set()  # resume keys of pages on the engine now
    twins: dict[Any, list[PageItem]] = {}  # pages waiting for identical bytes on the engine
    with _outputs(file_writer, json_stream) as (to_file, to_stream):
        earlier = _Earlier(output)

        def show(item: PageItem, rec: PageRecord) -> None:
            if to_stream is not None:
                to_stream.write(rec)
            events.record(item, rec)

        ordered = _InOrder(show)

        def finished(item: PageItem, rec: PageRecord) -> None:
            # Written before the state hears of it: a crash never marks an unwritten page done.
            # The file gets records as pages finish; stdout and the display in input order.
            if to_file is not None:
                to_file.write(rec)
            if state is not None:
                state.add(rec)
            key = runner.key(job, item.sha256, item.source, item.page)
            inflight.discard(key)
            if docs is not None:
                earlier.remember(rec)
                docs.add(rec, fresh=True)
                for twin in twins.pop(key, []):  # identical bytes under another name
                    docs.add(_as(rec, twin), fresh=True)
            stats.count(rec)
            events.finished(item, rec)
            ordered.done(item, rec)

        try:
            stream: list[Iterator[Opened | PageItem]] = [iter(items)]  # swapped for the feeder
            feeder = None
            for item in _switchable(stream):
                if workers and feeder is None and isinstance(item, PageItem) and item.info:
                    # The first page to render: the model (its tile, the tier rule), then the
                    # feeder's worker processes render this page and every later one.
                    if runner.model is None:
                        load()
                        stats.loaded = True
                    feeder = _feeder(runner, job, workers)
                    closers.append(feeder.close)
                    stream[0] = through_feeder(
                        itertools.chain([item], stream[0]),
                        feeder,
                        lambda info: runner.tier_for(job, info),
                        password=sources.password,
                        max_pixels=sources.max_pixels,
                    )
                    continue
                if isinstance(item, Opened):
                    for note in item.notes:  # once per file
                        events.note(f"{item.source}: {note}")
                    events.opened(item.source, item.pages, single=single_arg and item.pages == 1)
                    if docs is not None:
                        docs.opened(item.source, item.numbers, item.sha256)
                    continue
                stats.pages += 1
                key = runner.key(job, item.sha256, item.source, item.page)
                if _skip(item, runner, job, state, redo_failed, stats) or key in inflight:
                    if key in inflight:  # the same bytes again, already on the engine
                        stats.skipped += 1
                        twins.setdefault(key, []).append(item)
                    elif docs is not None:
                        before = earlier.get(key)
                        if before is not None:
                            # Its own file too (same text, its own name and page count).
                            docs.add(_as(before, item), fresh=False)
                    events.skipped(item)
                    continue
                ordered.expect(item)
                needs_model = item.error is None and not item.blank
                if needs_model and runner.model is None:
                    load()
                    stats.loaded = True
                if needs_model and engine is None and (batch_size != 1 or job.num_beams > 1):
                    engine = _engine(runner, job, batch_size)
                    stats.batch_size = engine.capacity
                on_text: Callable[[str], None] | None = events.text if events.wants_text() else None
                on_count = functools.partial(events.token, item)
                if engine is None:
                    rec = runner.run_page(
                        item, job, on_start=events.page_started, on_text=on_text, on_count=on_count
                    )
                    finished(item, rec)
                    continue
                done = runner.settled(item, job)
                if done is None:
                    inflight.add(key)
                    done = engine.submit(
                        item, on_start=events.page_started, on_text=on_text, on_count=on_count
                    )
                if done is not None:
                    finished(item, done)
                while engine.busy >= engine.capacity:  # keep the slots full, no more
                    for it, rec in engine.step():
                        finished(it, rec)
            while engine is not None and engine.busy:
                for it, rec in engine.step():
                    finished(it, rec)
        finally:
            if hasattr(items, "close"):
                items.close()
            for close in closers:
                close()
            if engine is not None:
                engine.close()
            stats.files_written = 0 if docs is None else docs.written
            stats.records_path = None if output is None else Path(output)
    return stats


def _as(rec: PageRecord, item: PageItem) -> PageRecord:
    """``rec`` (of identical bytes) as the record of ``item``'s document, for its own file."""
    import dataclasses

    if rec.source == item.source:
        return rec
    return dataclasses.replace(rec, source=item.source, page_count=item.page_count)


def _switchable(current: list[Iterator[Any]]) -> Iterator[Any]:
    """Items of whatever iterator ``current[0]`` is now (the loop may swap it)."""
    while True:
        try:
            yield next(current[0])
        except StopIteration:
            return


def _feeder(runner: PageRunner, job: Job, workers: int) -> Feeder:
    """The page feeder for a loaded model: ``workers`` processes, blank check included, its
    shared-memory slots sized for the largest tier the job can use."""
    from ixcdoc.feeder import Feeder

    assert runner.model is not None
    tile = runner.model.config.tile
    max_hd = job.hd if job.hd is not None else job.task.hd_ceiling
    return Feeder(workers, max_tile=tile, max_hd=max_hd, blank_check=True)


def _engine(runner: PageRunner, job: Job, batch_size: int | None) -> EnginePages:
    """The batched engine for a run: ``batch_size`` slots (None: what memory allows), each
    long enough for the largest page the job can send."""
    from ixcdoc.pagerun import EnginePages
    from ixcdoc.sizing import auto_batch, job_positions

    model = runner.model
    assert model is not None
    positions = job_positions(model, job)
    n = batch_size if batch_size is not None else auto_batch(model, job, positions)
    slots = max(1, n) * job.num_beams  # every beam of a page has its own slot
    return EnginePages(runner, job, model.engine(n_slots=slots, max_len=positions))


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


def _skip(
    item: PageItem,
    runner: PageRunner,
    job: Job,
    state: ResumeState | None,
    redo_failed: bool,
    stats: BatchStats,
) -> bool:
    """Account for a page that needs no work (done before, failed before, or a duplicate)."""
    if item.skipped:
        key = runner.key(job, item.sha256, item.source, item.page)
        if state is not None and key in state.failed:
            stats.skipped_failed += 1
        else:
            stats.skipped += 1
        return True
    if state is None:
        return False
    if item.error is not None and item.page is None:
        key = runner.key(job, item.sha256, item.source, None)
        if state.should_skip(key, redo_failed=redo_failed):
            stats.skipped_failed += 1
            return True
    # Identical bytes seen earlier in this run are the same job (docs/output.md).
    if (
        item.page is not None
        and item.sha256 is not None
        and runner.key(job, item.sha256, item.source, item.page) in state.done
    ):
        stats.skipped += 1
        return True
    return False
