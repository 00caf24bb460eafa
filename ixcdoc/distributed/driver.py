"""``run_ray``: the driver's loop, from listing to the last record, with shards and passes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ixcdoc.batch import BatchStats, Events, open_run_output
from ixcdoc.distributed.cluster import RayOptions, check_address, ray_session, run_pages
from ixcdoc.distributed.listing import list_pages
from ixcdoc.errors import IxcdocError
from ixcdoc.pagerun import Job, PageRunner
from ixcdoc.reading import PageItem

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.records import PageRecord, ResumeKey, ResumeState

PASSES = 2  # Ray's own retries, then one pass over whatever is still missing


def _unwrap(e: BaseException) -> BaseException:
    """The ixcdoc error inside a Ray task error (a bad model path, say), else ``e``."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        if isinstance(cur, IxcdocError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
        seen += 1
    return e


def run_ray(
    job: Job,
    sources: Sources,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    quant: str = "auto",
    output: str | os.PathLike[str] | None = None,
    json_stream: TextIO | None = None,
    redo_failed: bool = False,
    events: Events | None = None,
    ray: RayOptions | None = None,
) -> BatchStats:
    """``batch.run`` on Ray Data: the same records, resume and skip rules, many replicas.

    ``output``: a JSONL file, or a folder (``DIR/``) that gets one new shard per run and whose
    shards together are the resume state. Records carry ``worker`` (host:pid of the replica).
    """
    from ixcdoc.hub import local_revision, model_name

    options = ray or RayOptions()
    if options.address is not None:
        check_address(options.address)  # a malformed address: one line before any listing
    events = events or Events()
    model_arg = None if model is None else os.fspath(model)
    # A local folder becomes its absolute path (Ray's workers run elsewhere), a hub id stays.
    name = model_name(model_arg)
    runner = PageRunner(job, name, local_revision(model_arg), device)
    file_writer, state = open_run_output(output, events)  # as on one machine
    try:
        return _drive(
            sources,
            runner,
            state,
            file_writer,
            json_stream,
            events,
            options,
            name,
            device=device,
            quant=quant,
            redo_failed=redo_failed,
        )
    finally:
        if file_writer is not None:
            file_writer.close()  # also when _drive never got to open its outputs


def _drive(
    sources: Sources,
    runner: PageRunner,
    state: ResumeState | None,
    file_writer: Any,
    json_stream: TextIO | None,
    events: Events,
    options: RayOptions,
    name: str,
    *,
    device: str,
    quant: str,
    redo_failed: bool,
) -> BatchStats:
    """List the pages, run them on Ray, and write every record once (see ``run_ray``)."""
    stats = BatchStats()
    listing = list_pages(
        sources, runner, state, redo_failed=redo_failed, stats=stats, events=events
    )
    seen: set[ResumeKey] = set()
    by_key = {runner.key(t.sha256, t.source, t.page): t for t in listing.tasks}
    from ixcdoc.batch import _outputs
    from ixcdoc.records import resume_key

    with _outputs(file_writer, json_stream) as writers:

        def sink(item: PageItem, rec: PageRecord) -> None:
            # Written before the state hears of it: a crash never marks an unwritten page done.
            for w in writers:
                if w is not None:
                    w.write(rec)
            if state is not None:
                state.add(rec)
            stats.count(rec)
            events.record(item, rec)

        for err_item in listing.file_errors:
            sink(err_item, runner.run_page(err_item))
        todo = listing.tasks
        if not todo:
            return stats
        ray_mod: Any
        with ray_session(options, options.replicas) as ray_mod:
            for _ in range(PASSES):
                try:
                    for rec in run_pages(
                        ray_mod,
                        todo,
                        runner.job,
                        sources,
                        model=name,
                        device=device,
                        quant=quant,
                        options=options,
                    ):
                        key = resume_key(rec)
                        if key in seen:  # a retried batch delivered twice: keep the first
                            continue
                        seen.add(key)
                        stats.loaded = True
                        item = PageItem(rec.source, rec.content_sha256, rec.page, rec.page_count)
                        sink(item, rec)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    inner = _unwrap(e)
                    if inner is not e:
                        raise inner from None
                    raise
                todo = [t for k, t in by_key.items() if k not in seen]
                if not todo:
                    break
    if todo:
        stats.failed += len(todo)
        events.note(
            f"{len(todo)} pages got no record (their replicas kept failing); "
            "run the same command again to retry them"
        )
    return stats
