"""The driver's part before any work is scheduled: documents listed, each opened once, pages
selected, and the pages the output already holds dropped. Local paths and object-store URIs
(through pyarrow's file systems)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ixcdoc.batch import BatchStats, Events, skip_page, skip_rule
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.pagerun import PageRunner
from ixcdoc.reading import Opened, PageItem, select_pages

if TYPE_CHECKING:
    from ixcdoc.inputs import Document, Sources
    from ixcdoc.records import ResumeKey, ResumeState


@dataclass(frozen=True)
class PageTask:
    """One page to do, as the driver lists it: what the render task opens."""

    source: str
    path: str
    sha256: str
    page: int
    page_count: int


@dataclass
class Listing:
    """What the driver found: pages to schedule and whole-file errors to record now."""

    tasks: list[PageTask] = dataclasses.field(default_factory=list)
    file_errors: list[PageItem] = dataclasses.field(default_factory=list)


def list_pages(
    sources: Sources,
    runner: PageRunner,
    state: ResumeState | None,
    *,
    redo_failed: bool,
    stats: BatchStats,
    events: Events,
) -> Listing:
    """Open each document once, select its pages and keep those not done yet, in order: the
    selection and skip rules of one machine (``reading.select_pages``, ``batch.skip_page``)."""
    if sources.stdin is not None or sources.stdin_error is not None or "-" in sources.paths:
        raise UsageError(
            'stdin ("-") cannot be read with --ray: the replicas read the files themselves; '
            "save it to a file on the shared file system"
        )
    skip = skip_rule(runner, state, redo_failed) if state is not None else None
    listing = Listing()
    scheduled: set[ResumeKey] = set()
    pages = select_pages(_documents(sources), choose=runner.job.choose_pages(), skip=skip)
    for item in pages:
        if isinstance(item, Opened):
            events.opened(item.source, item.pages, single=False)
            continue
        stats.pages += 1
        if isinstance(item, PageItem):  # done in an earlier run, or a file that did not open
            if skip_page(item, runner, state, redo_failed, stats):
                events.skipped(item)
            else:
                listing.file_errors.append(item)
            continue
        doc, n = item.doc, item.page
        key = runner.key(doc.sha256, doc.source, n)
        if key in scheduled:  # the same bytes met earlier in this run (docs/output.md)
            if state is not None and key in state.failed:
                stats.skipped_failed += 1
            else:
                stats.skipped += 1
            events.skipped(PageItem(doc.source, doc.sha256, n, doc.page_count))
            continue
        scheduled.add(key)
        # Absolute: Ray's workers do not share the driver's working folder. A URI's document
        # was read from bytes; the render task reads the URI again.
        path = os.path.abspath(doc.path) if doc.path is not None else doc.source
        listing.tasks.append(PageTask(doc.source, path, doc.sha256, n, doc.page_count))
    return listing


def is_uri(path: str) -> bool:
    """An object-store (or other pyarrow file system) URI: ``s3://``, ``gs://``, ``file://``."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isidentifier()


def _uri_files(uri: str) -> list[str] | IxcdocError:
    """The file URIs under ``uri`` (itself if it is a file), in natural order; hidden names
    are skipped as in a local folder walk."""
    try:
        from pyarrow import fs as pafs
    except ImportError as e:
        raise UsageError(f'{uri}: reading URIs needs pyarrow: pip install "ixcdoc[ray]"') from e

    from ixcdoc.errors import InputError
    from ixcdoc.inputs import natural_key

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            return InputError(uri, "no such object or folder", code="not_found")
        if info.type != pafs.FileType.Directory:
            return [uri]
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:  # pyarrow's errors are OSError/ArrowInvalid(ValueError)
        return InputError(uri, f"cannot list: {e}", code="unreadable")
    prefix = uri.rstrip("/")
    files = []
    for f in found:
        rel = f.path[len(root.rstrip("/")) + 1 :]
        if f.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
            continue
        files.append((tuple(natural_key(p) for p in rel.split("/")), f"{prefix}/{rel}"))
    return [u for _, u in sorted(files)]


def read_uri(uri: str) -> bytes:
    """The bytes of one object (raises InputError)."""
    from pyarrow import fs as pafs

    from ixcdoc.errors import InputError

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise InputError(uri, f"cannot read: {e}", code="unreadable") from e


def open_uri(uri: str, password: str | None, max_pixels: int | None) -> Document:
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return open_bytes(read_uri(uri), source=uri, password=password, max_pixels=limit)


def _documents(sources: Sources) -> Iterator[tuple[Document, list[int]] | IxcdocError]:
    """``Sources.documents`` in argument order, with object-store URIs read through pyarrow."""
    from ixcdoc.errors import InputError
    from ixcdoc.inputs import select_pages

    for arg in sources.paths:
        if not is_uri(arg):
            yield from sources.replace(paths=(arg,)).documents()
            continue
        files = _uri_files(arg)
        if isinstance(files, IxcdocError):
            yield files
            continue
        for uri in files:
            try:
                doc = open_uri(uri, sources.password, sources.max_pixels)
            except InputError as e:
                yield e
                continue
            try:
                yield doc, select_pages(sources.pages, doc.page_count, source=uri)
            except InputError as e:
                yield e
            finally:
                doc.close()
