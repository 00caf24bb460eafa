"""Pages read ahead: open each document once, choose its pages, render and blank-check them,
and make the HD image for the page's tier, on a worker thread while the model runs.

``read_pages`` is the producer (it yields ``Opened`` once per document, then a ``PageItem``
per page), over ``select_pages`` (which pages, and which are done: shared with the Ray
driver's listing); ``ahead`` runs any iterator on a worker thread a few items in front of its
consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import InputError, IxcdocError

if TYPE_CHECKING:
    from pathlib import Path

    from ixcdoc.feeder import Feeder
    from ixcdoc.inputs import Document, PageInfo, RenderedPage, Sources
    from ixcdoc.planning import TierChoice
    from ixcdoc.preprocess import HDImage
    from ixcdoc.ranking import PageChoice
    from ixcdoc.records import Screening


@dataclass
class PageItem:
    """One page as the reader hands it over: rendered, or why it could not be."""

    source: str
    sha256: str | None
    page: int | None  # None: an error about the whole file
    page_count: int | None
    rendered: RenderedPage | None = None
    tier: TierChoice | None = None  # chosen once, here or by the runner
    hd_image: HDImage | None = None  # made ahead for ``tier``
    blank: bool = False
    error: IxcdocError | None = None
    skipped: bool = False  # already done in the output file (resume): not rendered
    flags: tuple[str, ...] = ()  # what the document says of this page (repaired, low_dpi, ...)
    # Not rendered yet (the feeder renders it in a worker process): what the worker needs.
    info: PageInfo | None = None
    origin: Path | bytes | None = None
    has_text: bool = False
    screening: Screening | None = None  # how ask chose this page among the document's
    # The page's text layer in reading order, the model's draft (speculative decoding), read
    # when the job drafts and the page has one (at most ``tasks.DRAFT_CHARS``); None: no draft.
    draft: str | None = None


@dataclass(frozen=True)
class Opened:
    """A document was opened: ``pages`` of its pages will follow (for progress totals), and
    what the user should know about the file (a repaired PDF, a lying extension)."""

    source: str
    pages: int
    notes: tuple[str, ...] = ()
    numbers: tuple[int, ...] = ()  # the page numbers that will follow
    sha256: str | None = None


class TierPlan:
    """The tier rule for pages, known once the model is: the reader uses it when it is set,
    and leaves the choice to the runner for pages read before that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._choose: Callable[[PageInfo], TierChoice] | None = None
        self._hd_image: Callable[[RenderedPage, TierChoice], HDImage] | None = None

    def set(
        self,
        choose: Callable[[PageInfo], TierChoice],
        hd_image: Callable[[RenderedPage, TierChoice], HDImage] | None = None,
    ) -> None:
        """From now on, pages get ``choose(info)`` and (optionally) their HD image ahead."""
        with self._lock:
            self._choose, self._hd_image = choose, hd_image

    def apply(self, item: PageItem) -> None:
        """Choose the tier of a rendered page (and make its HD image) if the rule is known."""
        with self._lock:
            choose, make = self._choose, self._hd_image
        if choose is None or item.rendered is None or item.blank or item.tier is not None:
            return
        item.tier = choose(item.rendered.info)
        if make is not None:
            item.hd_image = make(item.rendered, item.tier)


def file_sha256_or_none(source: str) -> str | None:
    """SHA-256 of a regular file whose bytes were read but did not open as a document.

    docs/output.md: ``content_sha256`` is null only when the bytes could not be read; the hash
    also keys the whole-file error, so a later page of the same file supersedes it.
    """
    import os

    from ixcdoc.inputs import file_sha256

    if source == "-" or not os.path.isfile(source):  # stdin, pipes, folders: no bytes to hash
        return None
    try:
        return file_sha256(source)
    except OSError:
        return None


@dataclass(frozen=True)
class Selected:
    """A page chosen to be read: page ``page`` of the open ``doc`` (open while it is handled)."""

    doc: Document
    page: int
    screening: Screening | None = None


def select_pages(
    documents: Iterable[tuple[Document, list[int]] | IxcdocError],
    *,
    choose: Callable[[Document, list[int]], PageChoice] | None = None,
    skip: Callable[[str, int], bool] | None = None,
) -> Iterator[Opened | PageItem | Selected]:
    """Each document's ``Opened``, then its pages in order: ``Selected`` for a page to read, a
    ``PageItem`` for a page ``skip`` says is done (``skipped``, not read) or for a file that
    did not open (``error``, ``page`` None or the page it names).

    The one page selection of a run, on one machine (``read_pages``) and in the Ray driver's
    listing: ``choose(doc, numbers)`` narrows the selected pages (``ask`` ranks them, and its
    screening goes with every page), ``skip(sha256, page)`` drops the done ones.
    """
    for item in documents:
        if isinstance(item, IxcdocError):
            source = getattr(item, "source", "?")
            unread = item.code in ("not_found", "unreadable")
            sha = None if unread else file_sha256_or_none(source)
            yield Opened(source, 1)
            yield PageItem(source, sha, getattr(item, "page", None), None, error=item)
            continue
        doc, numbers = item
        screening = None
        if choose is not None:
            choice = choose(doc, numbers)
            numbers, screening = list(choice.pages), _screening(choice)
        yield Opened(doc.source, len(numbers), tuple(doc.notes), tuple(numbers), doc.sha256)
        for n in numbers:
            if skip is not None and skip(doc.sha256, n):
                yield PageItem(
                    doc.source, doc.sha256, n, doc.page_count, skipped=True, screening=screening
                )
                continue
            yield Selected(doc, n, screening)


def read_pages(
    sources: Sources,
    *,
    choose: Callable[[Document, list[int]], PageChoice] | None = None,
    skip: Callable[[str, int], bool] | None = None,
    plan: TierPlan | None = None,
    render: bool = True,
    drafts: bool = False,
) -> Iterator[Opened | PageItem]:
    """Open, select, render and blank-check pages in input order, each document once.

    ``choose`` and ``skip``: as ``select_pages``; ``plan`` chooses each page's tier and HD
    image ahead once the model is known. ``render=False`` leaves rendering to the feeder
    (``through_feeder``): pages come with their ``info``, ``origin`` and whether they have a
    text layer instead. ``drafts``: each page with a text layer carries it (``PageItem.draft``).
    """
    for item in select_pages(sources.documents(), choose=choose, skip=skip):
        if not isinstance(item, Selected):
            yield item
            continue
        page = read_page(item.doc, item.page, render=render, draft=drafts)
        page.screening = item.screening
        if plan is not None:
            plan.apply(page)
        yield page


def read_page(
    doc: Document,
    n: int,
    *,
    source: str | None = None,
    render: bool = True,
    draft: bool = False,
) -> PageItem:
    """Page ``n`` of an open document as the reader hands it over: its flags (``repaired``,
    ``type_mismatch``, ``low_dpi``, ...), rendered and blank-checked, or the error that stopped
    it. The one page reader of ``read_pages`` and the Ray render task. ``source``: the name
    records use (default: the document's). ``render=False``: what the feeder needs instead.
    ``draft``: the page's text layer goes with it, the model's draft (``page_draft``)."""
    from ixcdoc.guards import is_blank

    base = (source or doc.source, doc.sha256, n, doc.page_count)
    try:
        flags = doc.page_flags(n)
        if not render:
            info, text = doc.page_info(n), doc.has_text_layer(n)
            words = page_draft(doc, n) if draft and text else None
            return PageItem(
                *base, flags=flags, info=info, origin=doc.origin, has_text=text, draft=words
            )
        r = doc.render(n)
    except InputError as e:
        return PageItem(*base, error=e, flags=doc.flags)
    # A page whose text layer has words is never blank, however faint its render.
    blank = is_blank(r.image) and not doc.has_text_layer(n)
    words = page_draft(doc, n) if draft and not blank and doc.has_text_layer(n) else None
    return PageItem(*base, rendered=r, blank=blank, flags=flags, draft=words)


def page_draft(doc: Document, n: int) -> str | None:
    """Page ``n``'s text layer in reading order as the model's draft, cut to
    ``tasks.DRAFT_CHARS`` (a draft only speeds decoding up: a page whose text cannot be read,
    or has none, simply has no draft)."""
    from ixcdoc.tasks import DRAFT_CHARS

    try:
        text = doc.page_text(n)
    except InputError:
        return None
    return text[:DRAFT_CHARS] if text.strip() else None


def _screening(choice: PageChoice) -> Screening | None:
    """What the records say of a choice the model's screening made (None: no model pass)."""
    if not choice.scores or choice.tier is None:
        return None
    from ixcdoc.records import Screening

    return Screening(tier=choice.tier, scores=dict(choice.scores), chosen=choice.pages)


def ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator on a worker thread, ``depth`` items ahead of the consumer.

    Rendering of the next pages overlaps with the model on the current one (PyMuPDF calls go
    through one lock in ``inputs``). An exception in the worker is raised in the consumer;
    closing the returned generator stops the worker at its next item.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put("item", item):
                    break
        except BaseException as e:  # handed to the consumer, raised there
            put("error", e)
        finally:
            if hasattr(items, "close"):
                items.close()
            put("end", None)

    t = threading.Thread(target=work, name="ixcdoc-reader", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def through_feeder(
    items: Iterator[Opened | PageItem],
    feeder: Feeder,
    tier: Callable[[PageInfo], TierChoice],
    *,
    password: str | None = None,
    max_pixels: int | None = None,
) -> Iterator[Opened | PageItem]:
    """Pages of ``read_pages(render=False)`` rendered and HD-transformed by ``feeder``'s
    worker processes, in the same order, everything else passed through where it was.

    Each page's tier is chosen here, once (``tier(info)``), and the worker renders straight
    at it (a born-digital page in one pass). The feeder pulls pages on this thread as it needs
    them, so the items in between come out in their place.
    """
    from collections import deque

    from ixcdoc.feeder import FeedItem
    from ixcdoc.inputs import RenderedPage

    waiting: deque[Opened | PageItem] = deque()

    def feed() -> Iterator[FeedItem]:
        for it in items:
            waiting.append(it)
            if isinstance(it, PageItem) and it.info is not None and it.error is None:
                it.tier = tier(it.info)
                assert it.origin is not None
                yield FeedItem(
                    it.origin if isinstance(it.origin, bytes) else str(it.origin),
                    it.page or 1,
                    hd=it.tier.hd,
                    tile=it.tier.geometry.tile,
                    name=it.source,
                    password=password,
                    max_pixels=max_pixels,
                )

    def fed_page(it: object) -> bool:
        return isinstance(it, PageItem) and it.info is not None and it.error is None

    for fed in feeder.map(feed()):
        while not fed_page(waiting[0]):
            yield waiting.popleft()
        it = waiting.popleft()
        assert isinstance(it, PageItem) and it.info is not None
        if fed.error is not None:
            it.error, it.tier = fed.error, None
        else:
            own = fed.own()  # its pixels outlive the next page (many pages are in flight)
            it.rendered = RenderedPage(None, fed.info or it.info, own.render_ms)  # type: ignore[arg-type]
            it.hd_image = own.hd_image()
            it.blank = bool(fed.blank) and not it.has_text
        yield it
    yield from waiting
