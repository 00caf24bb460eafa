"""The page feeder: pages rendered and HD-transformed ahead, on worker processes, in order.

::

    items = [FeedItem("paper.pdf", page, hd=25) for page in (1, 2, 3)]
    with Feeder(workers=2) as feeder:
        for fed in feeder.map(items):           # input order, ``depth`` pages ahead
            if fed.error is not None: record(fed.error); continue
            model.chat([fed.hd_image()], prompt, hd=fed.hd)   # valid until the next page

What each page costs: a born-digital PDF page (``PdfDocument.born_digital``) is rasterized
once, straight at the tier's resized size into its white-padded frame (``render_hd``). Scans
and images keep the upstream pixel-exact path: native render, then ``preprocess.hd_transform``.

Why processes: PyMuPDF holds the GIL while it renders. Pixels come back through one
``multiprocessing.shared_memory`` segment of ``depth + 1`` slots, each large enough for
``max_hd`` crops of ``tile`` pixels: nothing is pickled but a few numbers per page. The
segment is unlinked when the feeder closes (also on Ctrl-C, which closes the generator);
if the parent is killed, multiprocessing's resource tracker unlinks it once the workers,
which watch their parent, have exited. Workers are spawned, never forked (the parent may hold
CUDA state). ``workers=0`` does the same work in the calling process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from ixcdoc.errors import InputError, IxcdocError, UsageError
from ixcdoc.tiling import REAL_TILE, TierGeometry, hd_geometry

if TYPE_CHECKING:
    from ixcdoc.inputs.document import Document, PageInfo
    from ixcdoc.preprocess import HDImage

DEFAULT_MAX_HD = 55  # slots hold HD55 pages of 336-px crops (18.6 MB); larger ones are pickled
SHM_PREFIX = "ixcdoc_feed_"  # /dev/shm/<prefix>...: recognisable, so leaks can be looked for
_OPEN_DOCS = 4  # documents a worker keeps open (pages of one file usually come together)
_POLL_S = 0.5  # how often a waiting side checks that the other side is still alive
# A spawned worker that finds itself starting a Feeder while it imports the parent's script
# (no `if __name__ == "__main__":`) exits with this, so the parent can say so in one line.
_EXIT_NO_MAIN_GUARD = 87
_NO_MAIN_GUARD = (
    "Feeder workers are spawned processes: each imports your script again, and this script "
    "starts a Feeder when it is imported. Put the code that uses Feeder under "
    '`if __name__ == "__main__":` (docs/api.md)'
)

TierFn = Callable[[int, int], int]


def shm_prefix(pid: int | None = None) -> str:
    """The start of the names of the segments that feeders of process ``pid`` (this one by
    default) create in /dev/shm: how a leak of this process is told from other processes'."""
    return f"{SHM_PREFIX}{os.getpid() if pid is None else pid}_"


def planned_tier(native_h: int, native_w: int, task: Any, **choose: Any) -> int:
    """``planning.choose_tier(native_h, native_w, task, **choose).hd``, for ``Feeder(tier=)``.

    Pass it as ``functools.partial(planned_tier, task=..., hd=..., cfg=..., gpu=..., quant=...,
    max_new_tokens=...)``: a partial of a module-level function pickles to the workers.
    """
    from ixcdoc.planning import choose_tier

    return choose_tier(native_h, native_w, task, **choose).hd


@dataclass(frozen=True)
class FeedItem:
    """One page to deliver: a file (path or its bytes), a 1-based page, a tier and tile.

    ``hd=None`` asks the feeder's ``tier(native_h, native_w)`` function. ``name`` is the
    display name in errors (default: the path, or "-" for bytes).
    """

    source: str | os.PathLike[str] | bytes
    page: int
    hd: int | None = None
    tile: int = REAL_TILE
    name: str | None = None
    password: str | None = None
    max_pixels: int | None = None

    @property
    def display(self) -> str:
        """The name errors and records use."""
        if self.name is not None:
            return self.name
        return "-" if isinstance(self.source, bytes) else str(self.source)


@dataclass
class FedPage:
    """One delivered page: its HD pixels at its tier, or the error that stopped it.

    ``pixels`` is uint8 [padded_h, padded_w, 3] (the HD-transformed, white-padded page the
    model's ``pixels`` takes). From worker processes it is a view of a shared-memory slot,
    reused once the consumer asks for the next page: call ``own()`` to keep it longer.
    ``render_ms`` is the worker's time for the page (open, analyse, render, transform).
    ``direct`` is True when the page was rendered straight at its tier's size.
    """

    index: int
    item: FeedItem
    pixels: np.ndarray | None = None
    geometry: TierGeometry | None = None
    info: PageInfo | None = None
    direct: bool = False
    blank: bool | None = None  # only with Feeder(blank_check=True)
    render_ms: float = 0.0
    error: IxcdocError | None = None
    shared: bool = False  # pixels view a shared-memory slot (reused after the next page)

    @property
    def hd(self) -> int | None:
        """The tier the pixels were made for."""
        return None if self.geometry is None else self.geometry.hd

    def own(self) -> FedPage:
        """This page with its own copy of the pixels (safe to keep past the next page)."""
        if self.pixels is None or not self.shared:
            return self
        return replace(self, pixels=self.pixels.copy(), shared=False)

    def hd_image(self) -> HDImage:
        """The pixels as the ``preprocess.HDImage`` that ``DocModel.pixels``/``chat`` take.

        Another tier (an out-of-memory retry) renders the page again in this process.
        """
        from ixcdoc.preprocess import HDImage

        if self.pixels is None or self.geometry is None or self.info is None:
            raise ValueError(f"{self.item.display} page {self.item.page} has no pixels")
        g = self.geometry
        return HDImage(
            None,
            self.pixels,
            g.hd,
            g.tile,
            native=(self.info.native_w, self.info.native_h),
            redo=partial(_redo, self.item),
        )


def _redo(item: FeedItem, hd: int, tile: int) -> np.ndarray:
    """Render ``item`` again for another tier, in this process (an HDImage ``redo``)."""
    fed = render_item(replace(item, hd=hd, tile=tile), _open(item))
    if fed.error is not None:
        raise fed.error
    assert fed.pixels is not None
    return fed.pixels


def _open(item: FeedItem) -> Document:
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes, open_document

    limit = DEFAULT_MAX_PIXELS if item.max_pixels is None else item.max_pixels
    if isinstance(item.source, bytes):
        return open_bytes(
            item.source, source=item.display, password=item.password, max_pixels=limit
        )
    return open_document(
        Path(item.source), source=item.display, password=item.password, max_pixels=limit
    )


def hd_pixels(
    doc: Document,
    page: int,
    hd: int | None,
    tile: int = REAL_TILE,
    out: Callable[[TierGeometry], np.ndarray | None] | None = None,
    *,
    tier: TierFn | None = None,
    blank_check: bool = False,
) -> tuple[np.ndarray, TierGeometry, PageInfo, bool, bool | None]:
    """One page at its tier: (pixels [padded_h, padded_w, 3] uint8, geometry, info, direct, blank).

    Born-digital PDF pages are rendered straight at the resized size; scans and images are
    rendered natively and go through ``hd_transform`` (pixel-exact with upstream). ``out(g)``
    may supply the array to fill (a shared-memory slot) or None for a new one; ``hd=None``
    asks ``tier(native_h, native_w)``. ``blank`` is None unless ``blank_check``.
    """
    from ixcdoc.guards import is_blank

    info = doc.page_info(page)
    if hd is None:
        if tier is None:
            raise UsageError("a FeedItem without hd needs a Feeder(tier=...) function")
        hd = tier(info.native_h, info.native_w)
    g = hd_geometry(info.native_h, info.native_w, hd, tile)
    target = out(g) if out is not None else None
    blank: bool | None = None
    born_digital = getattr(doc, "born_digital", None)
    if born_digital is not None and born_digital(page):
        pixels = doc.render_hd(page, g, target)  # type: ignore[attr-defined]
        if blank_check:
            blank = _blank_region(pixels, g)
        return pixels, g, info, True, blank

    from ixcdoc.preprocess import hd_transform

    rendered = doc.render(page)
    if rendered.info != info:  # a frame that lied in its header: the render is the truth
        info = rendered.info
        g = hd_geometry(info.native_h, info.native_w, hd, tile)
        target = out(g) if out is not None else None
    if blank_check:
        blank = is_blank(rendered.image)
    hd_img = np.asarray(hd_transform(rendered.image, hd, tile))  # [H, W, 3] uint8
    if target is None:
        return hd_img, g, info, False, blank
    target[...] = hd_img
    return target, g, info, False, blank


def _blank_region(pixels: np.ndarray, g: TierGeometry) -> bool:
    # The blank guard on the page without its padding, thinned to ~1024 px a side first as
    # the guard itself does (nearest-neighbour), so it costs a millisecond, not a full copy.
    from PIL import Image

    from ixcdoc.guards import BLANK_SIDE, is_blank

    page = pixels[g.pad_top : g.pad_top + g.resized_h, g.pad_left : g.pad_left + g.resized_w]
    step = max(1, -(-max(g.resized_h, g.resized_w) // BLANK_SIDE))
    return is_blank(Image.fromarray(np.ascontiguousarray(page[::step, ::step])))


def render_item(
    item: FeedItem,
    doc: Document | IxcdocError,
    out: Callable[[TierGeometry], np.ndarray | None] | None = None,
    *,
    index: int = 0,
    tier: TierFn | None = None,
    blank_check: bool = False,
) -> FedPage:
    """``hd_pixels`` for one item; every failure becomes the page's error, never a raise."""
    t0 = time.perf_counter()
    fed = FedPage(index, item)
    try:
        if isinstance(doc, IxcdocError):
            raise doc
        pixels, g, info, direct, blank = hd_pixels(
            doc, item.page, item.hd, item.tile, out, tier=tier, blank_check=blank_check
        )
        fed.pixels, fed.geometry, fed.info, fed.direct, fed.blank = pixels, g, info, direct, blank
    except IxcdocError as e:
        # Without its traceback: the frames hold this page's slot view, and the cycle through
        # ``fed`` would keep the shared memory mapped until the garbage collector runs.
        fed.error = e.with_traceback(None)
    except Exception as e:  # a bug or an unforeseen library error: this page's, not the run's
        fed.error = IxcdocError(
            f"{item.display} page {item.page}: {type(e).__name__}: {e}", code="error"
        )
    fed.render_ms = (time.perf_counter() - t0) * 1000.0
    return fed


def _doc_key(item: FeedItem, blob: str | None) -> tuple[Any, ...]:
    src = blob if blob is not None else os.fspath(item.source)  # type: ignore[arg-type]
    return (src, item.name, item.password, item.max_pixels)


class _Docs:
    """The few documents a producer keeps open, least recently used closed first."""

    def __init__(self) -> None:
        self._docs: OrderedDict[tuple[Any, ...], Document | IxcdocError] = OrderedDict()

    def get(self, key: tuple[Any, ...], item: FeedItem) -> Document | IxcdocError:
        doc = self._docs.get(key)
        if doc is None:
            try:
                doc = _open(item)
            except IxcdocError as e:
                doc = e  # every page of the file gets the file's error, without reopening
            self._docs[key] = doc
            while len(self._docs) > _OPEN_DOCS:
                _, old = self._docs.popitem(last=False)
                if not isinstance(old, IxcdocError):
                    old.close()
        self._docs.move_to_end(key)
        return doc

    def close(self) -> None:
        for doc in self._docs.values():
            if not isinstance(doc, IxcdocError):
                doc.close()
        self._docs.clear()


class _SlotOut:
    """The ``out`` of ``hd_pixels`` in a worker: a view of one slot, remembered."""

    def __init__(self, buf: memoryview, slot: int, slot_bytes: int) -> None:
        self.buf, self.slot, self.slot_bytes = buf, slot, slot_bytes
        self.view: np.ndarray | None = None

    def __call__(self, g: TierGeometry) -> np.ndarray | None:
        self.view = _slot_view(self.buf, self.slot, self.slot_bytes, g)
        return self.view


def _slot_view(buf: memoryview, slot: int, slot_bytes: int, g: TierGeometry) -> np.ndarray | None:
    n = g.padded_h * g.padded_w * 3
    if n > slot_bytes:
        return None  # larger than a slot: the page travels pickled instead
    start = slot * slot_bytes
    return np.frombuffer(buf, dtype=np.uint8, count=n, offset=start).reshape(
        g.padded_h, g.padded_w, 3
    )


def _worker(
    wid: int,
    tasks: Any,
    results: Any,
    shm_name: str,
    slot_bytes: int,
    parent: int,
    tier: TierFn | None,
    blank_check: bool,
) -> None:
    """Worker loop: render each ("page", index, item, slot, blob, data) task into its slot.

    ``results`` is this worker's own pipe to the parent. ``send`` returns once the message is
    in the pipe, so a page answered before the worker dies is never lost (a ``Queue`` hands its
    messages to a thread that a crash kills), and a worker dying mid-message tears only its own
    pipe (a shared queue's write lock would stay held and stall every other worker)."""
    import queue
    import signal
    from multiprocessing import shared_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    shm = shared_memory.SharedMemory(name=shm_name)
    docs = _Docs()
    blobs: dict[str, bytes] = {}
    results.send(("ready", wid, None))
    try:
        while True:
            if os.getppid() != parent:
                # The parent died (killed): stop now. Exiting lets the resource tracker unlink
                # the shared memory.
                return
            try:
                task = tasks.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if task is None:
                return
            if task[0] == "forget":  # the map that sent these bytes is over
                blobs.clear()
                docs.close()
                continue
            _, index, item, slot, blob, data = task
            if data is not None:
                blobs[blob] = data
            if blob is not None:
                item = replace(item, source=blobs[blob])
            out = _SlotOut(shm.buf, slot, slot_bytes)
            fed = render_item(
                item,
                docs.get(_doc_key(item, blob), item),
                out,
                index=index,
                tier=tier,
                blank_check=blank_check,
            )
            in_slot = fed.pixels is not None and fed.pixels is out.view
            pixels = None if in_slot else fed.pixels
            del out
            fed.pixels = None
            fed.item = replace(fed.item, source=b"") if blob is not None else fed.item
            results.send(("page", wid, (fed, in_slot, pixels)))
            del fed
    finally:
        docs.close()
        _close_shm(shm)


def _close_shm(shm: Any) -> None:
    """Unmap ``shm`` now, or, while arrays still view it, when the last of them goes."""
    try:
        shm.close()
    except BufferError:
        # The buffer's exports keep the mmap object alive; dropping our reference lets it go
        # with the last view, and keeps SharedMemory.__del__ from retrying (and complaining).
        shm._mmap = None


def _importing_main() -> bool:
    """True in a spawned process while it imports the parent's main module (multiprocessing
    marks that phase; starting processes from it is what the guard prevents)."""
    import multiprocessing as mp

    return bool(getattr(mp.current_process(), "_inheriting", False))


class Feeder:
    """Render + HD-transform pages ahead on ``workers`` processes (0: in this process).

    ``depth`` pages are in flight at most (default: 2 per worker); the shared-memory ring has
    ``depth + 1`` slots of ``max_hd`` crops of ``max_tile`` pixels. ``tier(h, w)`` picks the
    tier of items with ``hd=None`` from the native size; it runs in the workers, so it must
    pickle (a module-level function or a ``functools.partial``). ``blank_check`` runs the
    blank-page guard on each page. Workers start on the first ``map`` and serve every later
    one until ``close()``.
    """

    def __init__(
        self,
        workers: int = 0,
        depth: int | None = None,
        *,
        max_hd: int = DEFAULT_MAX_HD,
        max_tile: int = REAL_TILE,
        tier: TierFn | None = None,
        blank_check: bool = False,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if workers and _importing_main():
            # We are a worker of another Feeder, still importing the parent's script: stop
            # here, quietly; the parent says why (a UsageError) when it sees this exit code.
            raise SystemExit(_EXIT_NO_MAIN_GUARD)
        self.workers = workers
        self.depth = max(1, depth if depth is not None else 2 * max(1, workers))
        self.slot_bytes = max_hd * max_tile * max_tile * 3  # a tier has at most hd crops
        self.tier = tier
        self.blank_check = blank_check
        self._procs: list[Any] = []
        self._tasks: list[Any] = []
        self._results: list[Any] = []  # per worker: the parent's end of its pipe
        self._shm: Any = None
        self._busy = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def shm_name(self) -> str | None:
        """The shared-memory segment's name while workers run (None in-process or closed)."""
        return None if self._shm is None else self._shm.name

    def _spawn(self, wid: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process that holds CUDA or OpenMP state
        tasks = ctx.Queue()
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker,
            args=(
                wid,
                tasks,
                writer,
                self._shm.name,
                self.slot_bytes,
                os.getpid(),
                self.tier,
                self.blank_check,
            ),
            name=f"ixcdoc-feed-{wid}",
            daemon=True,
        )
        proc.start()
        writer.close()  # the worker holds the only write end: its exit is the reader's EOF
        if wid < len(self._procs):
            self._tasks[wid].close()
            self._results[wid].close()
            self._procs[wid], self._tasks[wid], self._results[wid] = proc, tasks, reader
        else:
            self._procs.append(proc)
            self._tasks.append(tasks)
            self._results.append(reader)

    def _start(self) -> None:
        from multiprocessing import shared_memory

        if self._shm is not None:
            return
        name = f"{shm_prefix()}{secrets.token_hex(4)}"
        self._shm = shared_memory.SharedMemory(
            name=name, create=True, size=self.slot_bytes * (self.depth + 1)
        )
        try:
            for wid in range(self.workers):
                self._spawn(wid)
            ready = 0
            while ready < self.workers:
                kind, wid, payload = self._get()
                if kind == "died":
                    if payload == _EXIT_NO_MAIN_GUARD:
                        raise UsageError(_NO_MAIN_GUARD)
                    raise IxcdocError(f"feeder worker {wid} failed to start (exit code {payload})")
                ready += kind == "ready"
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the workers and unlink the shared memory (idempotent)."""
        for tasks in self._tasks:
            with contextlib.suppress(Exception):  # a queue of a worker that already died
                tasks.put(None)
        for proc in self._procs:
            proc.join(timeout=2 * _POLL_S + 1)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for tasks in self._tasks:
            tasks.close()
            tasks.join_thread()
        for reader in self._results:
            reader.close()
        self._procs, self._tasks, self._results = [], [], []
        if self._shm is not None:
            shm, self._shm = self._shm, None
            _close_shm(shm)  # a caller may still hold a page: unmapped when it lets go
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- delivery ----------------------------------------------------------------------------

    def map(self, items: Iterable[FeedItem]) -> Iterator[FedPage]:
        """Every item as a FedPage, in input order, at most ``depth`` pages ahead.

        A page's error (unreadable file, corrupt page) is its FedPage's ``error``; the
        iteration goes on. Close the iterator (or break out of a ``for``) to stop early.
        """
        if self._busy:
            raise RuntimeError("this Feeder is already mapping; one map at a time")
        self._busy = True
        try:
            if self.workers == 0:
                yield from self._map_here(items)
            else:
                self._start()
                yield from self._map_workers(items)
        finally:
            self._busy = False

    def _map_here(self, items: Iterable[FeedItem]) -> Iterator[FedPage]:
        docs = _Docs()
        blobs: dict[int, tuple[bytes, str]] = {}
        try:
            for index, item in enumerate(items):
                blob = None
                if isinstance(item.source, bytes):
                    blob = blobs.setdefault(id(item.source), (item.source, f"b{len(blobs)}"))[1]
                doc = docs.get(_doc_key(item, blob), item)
                yield render_item(
                    item, doc, index=index, tier=self.tier, blank_check=self.blank_check
                )
        finally:
            docs.close()

    def _get(self) -> tuple[str, int, Any]:
        """The next message of any worker, or ("died", wid, exit code) once a worker's pipe
        ends: after every message it sent before dying."""
        from multiprocessing.connection import wait

        while True:
            for reader in wait(self._results, timeout=_POLL_S):
                wid = self._results.index(reader)
                try:
                    return reader.recv()
                except (EOFError, OSError):  # its end closed (it exited), or a torn message
                    proc = self._procs[wid]
                    proc.join(timeout=5)
                    if proc.is_alive():  # a torn message from a live worker: stop it
                        proc.kill()
                        proc.join(timeout=5)
                    return ("died", wid, proc.exitcode)
            for wid, proc in enumerate(self._procs):
                if not proc.is_alive() and not self._results[wid].poll():
                    return ("died", wid, proc.exitcode)

    def _map_workers(self, items: Iterable[FeedItem]) -> Iterator[FedPage]:
        source = enumerate(items)
        free = list(range(self.depth + 1))
        held: int | None = None  # the slot of the page the consumer holds
        inflight: dict[int, tuple[int, int, FeedItem]] = {}  # index -> (worker, slot, item)
        load = [0] * self.workers
        done: dict[int, tuple[FedPage, int | None]] = {}  # out of order, waiting their turn
        # Bytes sources go to each worker once per map; the id() keys stay valid because
        # ``blobs`` holds the bytes objects until the map ends.
        blobs: dict[int, tuple[bytes, str]] = {}
        sent: set[tuple[int, str]] = set()
        retry: list[tuple[int, int, FeedItem]] = []  # queued on a worker that died
        exhausted = False
        nxt = 0
        buf = self._shm.buf

        def send(index: int, item: FeedItem, slot: int) -> None:
            wid = min(range(self.workers), key=load.__getitem__)
            blob = data = None
            task_item = item
            if isinstance(item.source, bytes):
                blob = blobs.setdefault(id(item.source), (item.source, f"b{len(blobs)}"))[1]
                if (wid, blob) not in sent:
                    sent.add((wid, blob))
                    data = item.source
                task_item = replace(item, source=b"")
            self._tasks[wid].put(("page", index, task_item, slot, blob, data))
            inflight[index] = (wid, slot, item)
            load[wid] += 1

        def dispatch() -> None:
            nonlocal exhausted
            while retry:
                send(*retry.pop())
            while not exhausted and free and len(inflight) + len(done) < self.depth:
                try:
                    index, item = next(source)
                except StopIteration:
                    exhausted = True
                    return
                send(index, item, free.pop())

        try:
            while True:
                if held is not None:  # the consumer asked for the next page: recycle its slot
                    free.append(held)
                    held = None
                dispatch()
                if exhausted and not inflight and not done:
                    return
                while nxt not in done:
                    kind, wid, payload = self._get()
                    if kind == "page":
                        fed, in_slot, pixels = payload
                        if fed.index not in inflight:  # from a worker already given up on
                            continue
                        _, slot, item = inflight.pop(fed.index)
                        load[wid] -= 1
                        fed.item = item
                        if in_slot:
                            assert fed.geometry is not None
                            fed.pixels = _slot_view(buf, slot, self.slot_bytes, fed.geometry)
                            fed.shared = True
                            done[fed.index] = (fed, slot)
                        else:
                            fed.pixels = pixels
                            free.append(slot)
                            done[fed.index] = (fed, None)
                        dispatch()
                    elif kind == "died":
                        self._lost(wid, payload, inflight, done, free, load, sent, retry)
                        self._spawn(wid)
                        dispatch()
                fed, held = done.pop(nxt)
                nxt += 1
                yield fed
        finally:
            if inflight or blobs:
                self._drain(inflight, bool(blobs))

    def _lost(
        self,
        wid: int,
        exitcode: int | None,
        inflight: dict[int, tuple[int, int, FeedItem]],
        done: dict[int, tuple[FedPage, int | None]],
        free: list[int],
        load: list[int],
        sent: set[tuple[int, str]],
        retry: list[tuple[int, int, FeedItem]],
    ) -> None:
        # A worker that dies (MuPDF crashing on a hostile file) fails the page it was on, not
        # the run. It takes its tasks in order, so that is its lowest index; the pages queued
        # behind it go to the fresh worker that takes its place.
        mine = sorted(index for index, v in inflight.items() if v[0] == wid)
        for index in mine[1:]:
            _, slot, item = inflight.pop(index)
            retry.insert(0, (index, item, slot))
        for index in mine[:1]:
            _, slot, item = inflight.pop(index)
            free.append(slot)
            err = InputError(
                item.display,
                f"the rendering worker stopped on this page (exit code {exitcode})",
                code="corrupt",
                page=item.page,
            )
            done[index] = (FedPage(index, item, error=err), None)
        load[wid] = 0
        sent.difference_update({k for k in sent if k[0] == wid})

    def _drain(self, inflight: dict[int, tuple[int, int, FeedItem]], forget: bool) -> None:
        # Stopped early (or done with bytes sources): wait for pages still being rendered, so
        # no worker writes into a slot the next map hands out, and let workers drop the bytes.
        if not self._results:
            return
        if forget:
            for tasks in self._tasks:
                tasks.put(("forget",))
        try:
            while inflight:
                kind, wid, payload = self._get()
                if kind == "page":
                    inflight.pop(payload[0].index, None)
                elif kind == "died":
                    for index in [i for i, v in inflight.items() if v[0] == wid]:
                        del inflight[index]
                    self._spawn(wid)
        except BaseException:
            self.close()  # interrupted while draining: the workers go, the slots with them
            raise
