"""The batch run as a library call: a job over sources into records.

    >>> from ixcdoc.batch import run
    >>> from ixcdoc.inputs import Sources
    >>> from ixcdoc.runner import Job
    >>> from ixcdoc.tasks import EXTRACT
    >>> stats = run(Job(EXTRACT, EXTRACT.prompt), Sources(["scans/"]), output="scans.jsonl")

``run`` owns the model loading (none when no page needs it), the resume index of the output
file, the writers, the skip rules and the out-of-memory ladder. It reports what happens through
``Events``, which the CLI's display implements; the default reports nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ixcdoc.reading import Opened, PageItem, TierPlan, ahead, read_pages
from ixcdoc.runner import Job, PageRunner

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
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

    def record(self, item: PageItem, rec: PageRecord) -> None:
        """A page's record, already written to every output."""

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
    flagged: int = 0  # repetition or tier_fallback
    pages: int = 0  # pages (and unreadable files) visited
    loaded: bool = False  # the model was loaded

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.skipped_failed)


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
def _outputs(output: str | os.PathLike[str] | None, json_stream: TextIO | None) -> Iterator[Any]:
    from ixcdoc.records import JsonlWriter

    writers: list[JsonlWriter] = []
    try:
        if output is not None:
            writers.append(JsonlWriter(output))
        if json_stream is not None:
            writers.append(JsonlWriter(json_stream))
        yield writers
    finally:
        for w in writers:
            w.close()


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
) -> BatchStats:
    """Run ``job`` on every page of ``sources``, one record each; return what happened.

    ``model``: a loaded ``DocModel``, or what ``ixcdoc.load`` takes (a folder, a hub id, None
    for the default) with ``device`` and ``quant``: then it is loaded when the first page
    needs it, and not at all when none does (every input failed or was done before).
    ``output``: a JSONL file to append records to; pages it already holds for this job are
    skipped (failed ones too, unless ``redo_failed``). ``json_stream``: also write each record
    there as a JSON line. Pages are read ``read_ahead`` pages in front of the model on a worker
    thread (0: on the calling thread). KeyboardInterrupt propagates after the reader stops;
    every record written before it is complete.
    """
    from ixcdoc.records import load_existing

    events = events or Events()
    if isinstance(model, (str, Path)) or model is None:
        from ixcdoc.hub import local_revision, model_name

        runner = PageRunner(model_name(model), local_revision(model), device)
        to_load: Any = model
    else:
        runner = PageRunner.loaded(model)
        to_load = None
    state = None
    if output is not None:
        state = load_existing(output)
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
    pages = read_pages(sources, choose=job.choose_pages(), skip=skip, plan=plan)
    items = ahead(pages, depth=read_ahead) if read_ahead > 0 else pages
    stats = BatchStats()
    single_arg = _single_input(sources)
    with _outputs(output, json_stream) as writers:

        def sink(rec: PageRecord) -> None:
            # Written before the state hears of it: a crash never marks an unwritten page done.
            for w in writers:
                w.write(rec)
            if state is not None:
                state.add(rec)

        try:
            for item in items:
                if isinstance(item, Opened):
                    events.opened(item.source, item.pages, single=single_arg and item.pages == 1)
                    continue
                stats.pages += 1
                if _skip(item, runner, job, state, redo_failed, stats):
                    events.skipped(item)
                    continue
                if item.error is None and not item.blank and runner.model is None:
                    load()
                    stats.loaded = True
                on_text: Callable[[str], None] | None = events.text if events.wants_text() else None
                rec = runner.run_page(item, job, on_start=events.page_started, on_text=on_text)
                sink(rec)
                if rec.status == "ok":
                    stats.ok += 1
                    stats.blank += "blank" in rec.flags
                    stats.flagged += bool({"repetition", "tier_fallback"} & set(rec.flags))
                else:
                    stats.failed += 1
                events.record(item, rec)
        finally:
            if hasattr(items, "close"):
                items.close()
    return stats


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
