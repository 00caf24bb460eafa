"""The library front door: turn arguments into page jobs, plan them, and (with a loaded model)
run the tasks. The CLI is a thin layer over this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ixcdoc.config import ModelConfig
from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.gpu import GpuInfo, assumed_gpu, detect_gpu
from ixcdoc.planning import choose_tier
from ixcdoc.tasks import preset


@dataclass
class PageJob:
    """One page of one open document, to plan or to run."""

    doc: Any  # ixcdoc.inputs.Document
    page: int


def iter_documents(
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[tuple[Any, list[int]] | IxcdocError]:
    """Each open document with its selected page numbers, in order; input problems are
    yielded, not raised. A document is closed when the consumer asks for the next item."""
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_sources, select_pages

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    for item in open_sources(list(paths), stdin=stdin, password=password, max_pixels=limit):
        if isinstance(item, IxcdocError):
            yield item
            continue
        try:
            numbers = select_pages(pages, item.page_count, source=item.source)
        except InputError as e:
            item.close()
            yield e
            continue
        try:
            yield item, numbers
        finally:
            item.close()


def iter_page_jobs(
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[PageJob | IxcdocError]:
    """Expand paths into page jobs in order; input problems are yielded, not raised."""
    for item in iter_documents(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(item, IxcdocError):
            yield item
            continue
        doc, numbers = item
        for n in numbers:
            yield PageJob(doc, n)


def plan_pages(
    paths: Sequence[str],
    *,
    task: str = "extract",
    hd: int | None = None,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    vram_gib: float | None = None,
    max_new_tokens: int | None = None,
    stdin: BinaryIO | None = None,
    cfg: ModelConfig | None = None,
    on_error: Callable[[IxcdocError], None] | None = None,
) -> tuple[list[dict[str, Any]], list[IxcdocError]]:
    """Plan every page without loading the model: one dict per page, and the failures."""
    cfg = cfg or ModelConfig()
    tp = preset(task)
    gpu: GpuInfo | None = assumed_gpu(vram_gib) if vram_gib else detect_gpu()
    rows: list[dict[str, Any]] = []
    failures: list[IxcdocError] = []
    for job in iter_page_jobs(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(job, IxcdocError):
            failures.append(job)
            if on_error:
                on_error(job)
            continue
        try:
            info = job.doc.page_info(job.page)
        except InputError as e:
            failures.append(e)
            if on_error:
                on_error(e)
            continue
        choice = choose_tier(
            info.native_h,
            info.native_w,
            tp,
            hd=hd,
            cfg=cfg,
            gpu=gpu,
            max_new_tokens=max_new_tokens,
        )
        g = choice.geometry
        rows.append(
            {
                "source": info.source,
                "page": info.page,
                "page_count": info.page_count,
                "native_size": [info.native_h, info.native_w],
                "render_dpi": None if info.dpi is None else round(info.dpi, 2),
                "dpi_rule": info.dpi_rule,
                "task": tp.name,
                "tier": choice.hd,
                "tier_reason": choice.reason,
                "grid": [g.rows, g.cols],
                "resized_size": [g.resized_h, g.resized_w],
                "padded_size": [g.padded_h, g.padded_w],
                "image_tokens": choice.image_tokens,
                "vram_gib": {q: round(e.total_gib, 2) for q, e in choice.vram.items()},
                "fits": None if gpu is None else choice.fits,
                "gpu": None if gpu is None else gpu.name,
            }
        )
    return rows, failures


TIER_LADDER = (1, 4, 9, 16, 25, 36, 45, 55, 65)


def tier_rows(
    *,
    aspect: tuple[float, float] = (1.0, 1.0),
    tiers: Sequence[int] = TIER_LADDER,
    vram_gib: float | None = None,
    max_new_tokens: int = 512,
    cfg: ModelConfig | None = None,
) -> list[dict[str, Any]]:
    """The tier table for a page of aspect (h, w): grid, tokens, estimated VRAM, fit."""
    from ixcdoc.tasks import TaskPreset

    cfg = cfg or ModelConfig()
    gpu = assumed_gpu(vram_gib) if vram_gib else detect_gpu()
    h, w = aspect
    scale = 10000 / max(h, w)  # a large page, so every tier's budget is the limit
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    any_task = TaskPreset("tiers", "", 1, 10**6, max_new_tokens, "")
    rows = []
    for hd in tiers:
        c = choose_tier(ph, pw, any_task, hd=hd, cfg=cfg, gpu=gpu)
        rows.append(
            {
                "tier": hd,
                "grid": [c.geometry.rows, c.geometry.cols],
                "padded_size": [c.geometry.padded_h, c.geometry.padded_w],
                "image_tokens": c.image_tokens,
                "vram_gib": {q: round(e.total_gib, 2) for q, e in c.vram.items()},
                "fits": None if gpu is None else c.fits,
            }
        )
    return rows


# ---- running tasks with a loaded model ---------------------------------------------------


@dataclass
class PreparedPage:
    """A page made ready on the producer thread: rendered, or the reason it could not be."""

    source: str
    sha256: str | None
    page: int | None
    page_count: int | None
    rendered: Any = None  # ixcdoc.inputs.RenderedPage
    hd_image: Any = None  # ixcdoc.preprocess.HDImage, made ahead for the expected tier
    blank: bool = False
    error: IxcdocError | None = None
    skipped: bool = False  # already in the output file (resume)


def background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator on a worker thread, ``depth`` items ahead of the consumer.

    Rendering and preprocessing of the next pages overlap with the model on the current one.
    All PyMuPDF work happens on that one thread (PyMuPDF objects are not shared across
    threads). Closing the returned generator stops the worker at its next item.
    """
    import queue
    import threading

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

    t = threading.Thread(target=work, name="ixcdoc-prefetch", daemon=True)
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


def _child_pages(q: Any, kwargs: dict[str, Any], parent: int) -> None:
    """Worker-process entry: put every PreparedPage (or the error that ended it) on ``q``."""
    import io
    import os
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    def put(item: tuple[str, Any]) -> bool:
        while True:
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                if os.getppid() != parent:  # the parent died (killed): stop, don't linger
                    return False

    data = kwargs.pop("stdin_data", None)
    kwargs["stdin"] = None if data is None else io.BytesIO(data)
    try:
        for item in prepare_pages(**kwargs):
            if not put(("item", item)):
                return
    except BaseException as e:
        put(("error", e))
    put(("end", None))


def background_process(depth: int = 2, **kwargs: Any) -> Iterator[PreparedPage]:
    """``prepare_pages(**kwargs)`` in a worker process, ``depth`` pages ahead.

    A process, not a thread: PyMuPDF holds the GIL while it renders, which would stall the
    main thread's decode loop. ``stdin`` travels as bytes (``stdin_data``); ``skip`` must be
    picklable. Closing the generator stops the worker.
    """
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")  # never fork a process that holds CUDA and OpenMP state
    q = ctx.Queue(maxsize=max(1, depth))
    proc = ctx.Process(
        target=_child_pages, args=(q, kwargs, os.getpid()), name="ixcdoc-render", daemon=True
    )
    proc.start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=1.0)
            except Exception:  # queue.Empty: check the worker is still alive
                if not proc.is_alive():
                    raise IxcdocError(
                        f"the page-rendering worker stopped unexpectedly (exit {proc.exitcode})"
                    ) from None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=5)
        q.close()


class SkipDone:
    """Picklable ``skip(sha256, page)``: the (content, page) pairs a resume state has done."""

    def __init__(self, pairs: set[tuple[str, int | None]]) -> None:
        self.pairs = frozenset(pairs)

    def __call__(self, sha: str, page: int) -> bool:
        return (sha, page) in self.pairs


def _file_sha256(source: str) -> str | None:
    """SHA-256 of a regular file whose bytes were read but did not open as a document.

    docs/output.md: ``content_sha256`` is null only when the bytes could not be read; the
    hash also keys the whole-file error, so a later page of the same file supersedes it.
    """
    import hashlib
    import os

    if source == "-" or not os.path.isfile(source):  # stdin, pipes, folders: no bytes to hash
        return None
    h = hashlib.sha256()
    try:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def prepare_pages(
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
    skip: Callable[[str, int], bool] | None = None,
    preprocess: Callable[[Any], Any] | None = None,
) -> Iterator[PreparedPage]:
    """Open, select, render and blank-check pages in order (run it under ``background``).

    ``skip(sha256, page)`` says a page is already done, so it is not even rendered;
    ``preprocess(rendered)`` makes the HD image ahead (``Runner.preprocess``).
    """
    from ixcdoc.guards import is_blank

    for item in iter_documents(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(item, IxcdocError):
            source = getattr(item, "source", "?")
            sha = _file_sha256(source) if item.code not in ("not_found", "unreadable") else None
            yield PreparedPage(source, sha, getattr(item, "page", None), None, error=item)
            continue
        doc, numbers = item
        for n in numbers:
            base = (doc.source, doc.sha256, n, doc.page_count)
            if skip is not None and skip(doc.sha256, n):
                yield PreparedPage(*base, skipped=True)
                continue
            try:
                r = doc.render(n)
            except InputError as e:
                yield PreparedPage(*base, error=e)
                continue
            blank = is_blank(r.image)
            hd_img = preprocess(r) if preprocess is not None and not blank else None
            yield PreparedPage(*base, rendered=r, hd_image=hd_img, blank=blank)


@dataclass(frozen=True)
class RunSpec:
    """What to do with every page: the task, the exact prompt, tier and length settings."""

    task: Any  # ixcdoc.tasks.TaskPreset
    prompt: str  # the instruction sent with the page (the question for ask)
    question: str | None = None
    hd: int | None = None  # None: automatic
    max_new_tokens: int | None = None

    @property
    def hd_setting(self) -> str:
        return "auto" if self.hd is None else str(self.hd)


def _is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error, raw from torch or as the runtime reports it (code oom)."""
    if isinstance(e, IxcdocError):
        return e.code == "oom"
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, oom)


def lower_tier(h: int, w: int, hd: int, tile: int) -> int | None:
    """The next tier below ``hd`` that really uses fewer crops, or None below HD1."""
    from ixcdoc.tiling import hd_geometry

    crops = hd_geometry(h, w, hd, tile).crops
    for lower in range(hd - 1, 0, -1):
        if hd_geometry(h, w, lower, tile).crops < crops:
            return lower
    return None


class Runner:
    """A loaded model plus what every record needs to say about it; runs one page at a time."""

    def __init__(
        self,
        model: Any,
        *,
        model_name: str,
        revision: str | None = None,
        gpu: GpuInfo | None = None,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.revision = revision
        self.gpu = gpu

    @property
    def precision(self) -> str | None:
        p = self.model.precision
        return None if p is None else str(p)

    @property
    def device(self) -> str:
        return str(self.model.device)

    def key(self, spec: RunSpec, sha256: str | None, source: str, page: int | None) -> Any:
        from ixcdoc.records import make_key

        return make_key(
            content_sha256=sha256,
            source=source,
            page=page,
            task=spec.task.name,
            prompt=spec.prompt,
            hd_setting=spec.hd_setting,
            model=self.model_name,
            model_revision=self.revision,
        )

    def _record(self, spec: RunSpec, prep: PreparedPage, **fields: Any) -> Any:
        from ixcdoc.records import PageRecord

        info = prep.rendered.info if prep.rendered is not None else None
        base: dict[str, Any] = {
            "source": prep.source,
            "content_sha256": prep.sha256,
            "page": prep.page,
            "page_count": prep.page_count,
            "task": spec.task.name,
            "question": spec.question,
            "prompt": spec.prompt,
            "hd_setting": spec.hd_setting,
            "native_size": None if info is None else (info.native_h, info.native_w),
            "render_dpi": None if info is None else info.dpi,
            "model": self.model_name,
            "model_revision": self.revision,
            "precision": self.precision,
            "device": self.device,
        }
        base.update(fields)
        return PageRecord(**base)

    def tier_for(self, spec: RunSpec, info: Any) -> Any:
        """The tier choice (``planning.TierChoice``) for a page of ``info``'s native size."""
        return choose_tier(
            info.native_h,
            info.native_w,
            spec.task,
            hd=spec.hd,
            cfg=self.model.config,
            gpu=self.gpu,
            quant=self.precision,
            max_new_tokens=spec.max_new_tokens,
        )

    def preprocess(self, spec: RunSpec) -> Callable[[Any], Any] | None:
        """``page -> HDImage`` at the tier ``run_page`` will pick: run on the render worker.

        None when no model is loaded (nothing will be run)."""
        from ixcdoc.preprocess import hd_image

        if self.model.config is None:
            return None

        tile = self.model.config.tile

        def prepare(rendered: Any) -> Any:
            return hd_image(rendered.image, self.tier_for(spec, rendered.info).hd, tile)

        return prepare

    def run_page(
        self,
        prep: PreparedPage,
        spec: RunSpec,
        *,
        on_start: Callable[[PreparedPage, int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Any:
        """Run the task on one prepared page and return its record (never raises for a page)."""
        from ixcdoc.guards import RepetitionGuard
        from ixcdoc.records import ErrorInfo, Timings

        if prep.error is not None:
            return self._record(
                spec, prep, status="error", error=ErrorInfo.from_exception(prep.error)
            )
        r = prep.rendered
        render_ms = round(r.render_ms, 3)
        if prep.blank:
            return self._record(
                spec,
                prep,
                status="ok",
                text="",
                flags=("blank",),
                timings=Timings(render_ms=render_ms),
            )
        cfg = self.model.config
        choice = self.tier_for(spec, r.info)
        tier = choice.hd
        flags: list[str] = []
        max_new = spec.max_new_tokens or spec.task.max_new_tokens
        while True:
            guard = RepetitionGuard()
            stream = self.model.tokenizer.stream() if on_text is not None else None

            def on_token(tid: int, guard: RepetitionGuard = guard, stream: Any = stream) -> bool:
                keep = guard(tid)
                if stream is not None and on_text is not None:
                    delta = stream.push(tid)
                    if delta:
                        on_text(delta)
                return keep

            if on_start is not None:
                on_start(prep, tier)
            try:
                page = prep.hd_image if prep.hd_image is not None else r.image
                ans = self.model.chat(
                    [page], spec.prompt, hd=tier, max_new_tokens=max_new, on_token=on_token
                )
                if stream is not None and on_text is not None:
                    tail = stream.flush()  # a character split across the last tokens
                    if tail:
                        on_text(tail)
                break
            except Exception as e:
                if not _is_oom(e):
                    # docs/output.md: an unexpected failure is this page's error record (code
                    # "error", the message names the exception); the batch goes on.
                    why = e.message if isinstance(e, IxcdocError) else f"{type(e).__name__}: {e}"
                    code = ErrorInfo.from_exception(e).code
                    return self._record(
                        spec,
                        prep,
                        status="error",
                        tier=tier,
                        flags=tuple(flags),
                        error=ErrorInfo(code, f"{prep.source} page {prep.page}: {why}"),
                        timings=Timings(render_ms=render_ms),
                    )
            # Outside the except block: the exception's traceback holds the failed forward's
            # tensors until it is gone, and only then can the cached blocks be released.
            self.model.release_memory()
            lower = lower_tier(r.info.native_h, r.info.native_w, tier, cfg.tile)
            if lower is None:
                return self._record(
                    spec,
                    prep,
                    status="error",
                    tier=tier,
                    flags=tuple(flags),
                    error=ErrorInfo(
                        "oom",
                        f"{prep.source} page {prep.page}: out of GPU "
                        f"memory even at HD{tier}; try --quant 4bit",
                    ),
                    timings=Timings(render_ms=render_ms),
                )
            tier = lower
            if "tier_fallback" not in flags:
                flags.append("tier_fallback")
        text = ans.text
        if guard.triggered:
            flags.append("repetition")
            text = self.model.tokenizer.decode(guard.trimmed())
        t = ans.timings
        return self._record(
            spec,
            prep,
            status="ok",
            text=text.strip(),
            flags=tuple(flags),
            tier=ans.hd,
            grid=ans.grid,
            image_tokens=ans.n_image_tokens,
            timings=Timings(
                render_ms=render_ms,
                preprocess_ms=t.get("vision_ms"),
                prefill_ms=t.get("prefill_ms"),
                decode_ms=t.get("decode_ms"),
                tokens=len(ans.token_ids),
            ),
        )


@dataclass
class BatchStats:
    """What a batch did, for the summary line and the exit code."""

    ok: int = 0
    failed: int = 0  # pages (or files) that failed in this run
    skipped: int = 0  # already done in the output file
    skipped_failed: int = 0  # failed in an earlier run and not retried (no --redo-failed)
    blank: int = 0
    flagged: int = 0  # repetition or tier_fallback

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.skipped_failed)


@dataclass(frozen=True)
class PageCount:
    """What a batch will visit: readable pages, and inputs that already failed to open."""

    pages: int
    errors: int


def count_pages(
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
) -> PageCount:
    """Count the pages a batch will visit (for the progress bar, and to load no model when
    nothing is readable). Opening is cheap: no page is rendered."""
    n = errors = 0
    for job in iter_page_jobs(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(job, IxcdocError):
            errors += 1
        else:
            n += 1
    return PageCount(n, errors)


class NotLoaded:
    """Stands in for the model when no input is readable: records say what was asked for."""

    precision = None
    config = None

    def __init__(self, model: str | None, device: str) -> None:
        self.device = device
        self.model = model

    @staticmethod
    def name_of(model: str | None) -> str:
        """The model as the records name it (``hub.model_name``)."""
        from ixcdoc.hub import model_name

        return model_name(model)


def run_batch(
    runner: Runner,
    spec: RunSpec,
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
    state: Any = None,  # ixcdoc.records.ResumeState: skip what is done, account what is new
    redo_failed: bool = False,
    sink: Callable[[Any], None] | None = None,
    on_start: Callable[[PreparedPage, int], None] | None = None,
    on_text: Callable[[str], None] | None = None,
    on_record: Callable[[PreparedPage, Any], None] | None = None,
    on_skip: Callable[[PreparedPage], None] | None = None,
    prefetch: int = 2,
    workers: str = "thread",
) -> BatchStats:
    """Run the task on every page, one record each, rendering ahead on a worker thread.

    ``sink(record)`` stores a record (file and/or stdout); it runs before ``state.add`` so a
    crash can never mark a page done that was not written. KeyboardInterrupt propagates after
    the worker is stopped; every record written so far is complete. ``prefetch`` is how many
    pages the worker renders ahead (0: none, everything on the calling thread); ``workers``
    is "thread" (the default) or "process". PyMuPDF holds the GIL while it renders, yet on
    the CPU benchmark the thread wins: a process must pickle every page image back to the
    main thread (docs/benchmarks.md).
    """
    stats = BatchStats()
    skip = None
    if state is not None:
        # The (content, page) pairs this job already has: skipped before they are rendered.
        probe = runner.key(spec, "", "", 0)
        pairs = {
            (k.content, k.page)
            for k in [*state.done, *([] if redo_failed else state.failed)]
            if k._replace(content="", page=0) == probe
        }
        skip = SkipDone(pairs)
    data = stdin.read() if stdin is not None else None
    args: dict[str, Any] = {
        "paths": list(paths),
        "pages": pages,
        "password": password,
        "max_pixels": max_pixels,
        "skip": skip,
    }
    import io

    if prefetch > 0 and workers == "process":
        produced: Iterator[PreparedPage] = background_process(
            depth=prefetch, stdin_data=data, **args
        )
    else:
        producer = prepare_pages(
            stdin=None if data is None else io.BytesIO(data),
            preprocess=runner.preprocess(spec) if prefetch > 0 else None,
            **args,
        )
        produced = background(producer, depth=prefetch) if prefetch > 0 else producer
    try:
        for prep in produced:
            if prep.skipped:
                key = runner.key(spec, prep.sha256, prep.source, prep.page)
                if state is not None and key in state.failed:
                    stats.skipped_failed += 1
                else:
                    stats.skipped += 1
                if on_skip:
                    on_skip(prep)
                continue
            if prep.error is not None and prep.page is None and state is not None:
                key = runner.key(spec, prep.sha256, prep.source, None)
                if state.should_skip(key, redo_failed=redo_failed):
                    stats.skipped_failed += 1
                    if on_skip:
                        on_skip(prep)
                    continue
            if state is not None and prep.page is not None and prep.sha256 is not None:
                # Identical bytes seen earlier in this run are the same job (docs/output.md).
                key = runner.key(spec, prep.sha256, prep.source, prep.page)
                if key in state.done:
                    stats.skipped += 1
                    if on_skip:
                        on_skip(prep)
                    continue
            rec = runner.run_page(prep, spec, on_start=on_start, on_text=on_text)
            if sink is not None:
                sink(rec)
            if state is not None:
                state.add(rec)
            if rec.status == "ok":
                stats.ok += 1
                stats.blank += "blank" in rec.flags
                stats.flagged += bool({"repetition", "tier_fallback"} & set(rec.flags))
            else:
                stats.failed += 1
            if on_record:
                on_record(prep, rec)
    finally:
        produced.close()
    return stats


def ask_pages(
    doc: str,
    question: str,
    *,
    stdin: BinaryIO | None = None,
    pages: str | None = None,
    top_k: int = 1,
    password: str | None = None,
    max_pixels: int | None = None,
) -> list[int] | None:
    """Which pages ``ask`` reads: the ``top_k`` best BM25 matches of the question.

    A one-page document, a document with no text layer on the selected pages, and a text
    layer that shares no word with the question all keep every selected page (each is
    answered in turn). None when the document does not open (the run will report why).
    """
    from ixcdoc.ranking import rank_pages

    for item in iter_documents(
        [doc], pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(item, IxcdocError):
            return None
        opened, numbers = item
        if len(numbers) <= 1:
            return numbers
        texts = [opened.page_text(n) for n in numbers]
        if not any(t.strip() for t in texts):
            return numbers
        best = rank_pages(question, texts, top_k=top_k)
        return [numbers[i] for i in best] if best else numbers
    return None


# ---- installation check ----------------------------------------------------------------------


def selftest(log: Callable[[str, float, str], None]) -> None:
    """Run the whole path on a tiny random checkpoint in the official layout, on the CPU.

    Writes the checkpoint to a temporary folder, renders a generated PDF page, loads through
    the real loader (and in 4-bit when bitsandbytes is installed), encodes and generates.
    ``log(step, ms, detail)`` reports each step; any failure raises.
    """
    import importlib.util
    import tempfile
    import time
    from pathlib import Path

    import pymupdf

    from ixcdoc.errors import ModelError
    from ixcdoc.inputs import open_bytes
    from ixcdoc.runtime import load
    from ixcdoc.tiling import hd_geometry
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    def step(name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        detail = fn()
        log(name, (time.perf_counter() - t0) * 1000, detail)

    with tempfile.TemporaryDirectory(prefix="ixcdoc-selftest-") as tmp:
        ckpt = Path(tmp) / "tiny"
        ctx: dict[str, Any] = {}

        def write() -> str:
            write_tiny_checkpoint(ckpt)
            return f"{len(list(ckpt.iterdir()))} files, 2 .bin shards + index, tokenizer"

        def render() -> str:
            pdf = pymupdf.open()
            page = pdf.new_page(width=612, height=792)
            page.insert_text((72, 90), "Invoice 0042", fontsize=18)
            page.insert_text((72, 130), "Total due: 12.50 EUR", fontsize=10)
            doc = open_bytes(pdf.tobytes(), source="selftest.pdf")
            ctx["page"] = doc.render(1)
            doc.close()
            info = ctx["page"].info
            return f"{info.native_w}x{info.native_h} px ({info.dpi_rule})"

        def load_fp32() -> str:
            ctx["model"] = load(ckpt, device="cpu")
            return f"tile {ctx['model'].tile}, {ctx['model'].precision}"

        def encode() -> str:
            m, img = ctx["model"], ctx["page"].image
            emb = m.encode_image(m.pixels(img, 4))
            w, h = img.size
            want = hd_geometry(h, w, 4, m.tile).image_tokens(m.config.vision.patch_size)
            if emb.shape[0] != want:
                raise ModelError(f"selftest: {emb.shape[0]} image tokens, tiling says {want}")
            return f"HD4: {emb.shape[0]} image tokens of width {emb.shape[1]}"

        def chat() -> str:
            ans = ctx["model"].chat(
                [ctx["page"].image], "What is the total?", hd=4, max_new_tokens=8
            )
            return f"{len(ans.token_ids)} tokens ({ans.stop_reason})"

        step("write a tiny checkpoint in the official layout", write)
        step("render a PDF page at native resolution", render)
        step("load it through the real loader (CPU, float32)", load_fp32)
        step("preprocess and encode the page", encode)
        step("generate", chat)
        if importlib.util.find_spec("bitsandbytes") is not None:

            def load_4bit() -> str:
                m = load(ckpt, device="cpu", quant="4bit")
                ans = m.chat([ctx["page"].image], "Total?", hd=1, max_new_tokens=4)
                return f"NF4 decoder linears, {len(ans.token_ids)} tokens"

            step("load and generate in 4-bit (bitsandbytes)", load_4bit)


def doctor_report() -> dict[str, Any]:
    """What ``ixcdoc doctor`` prints: GPU, versions, optional kernels, cached weights."""
    import importlib.metadata
    import importlib.util
    import platform

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    import torch

    report: dict[str, Any] = {"ixcdoc": version("ixcdoc"), "python": platform.python_version()}
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda or "not built with CUDA"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        report["gpu"] = (
            f"{torch.cuda.get_device_name()} ({free / 2**30:.1f} GiB free of {total / 2**30:.1f})"
        )
    else:
        report["gpu"] = "none (CUDA not available): --device cpu runs float32, slowly"
    bnb = version("bitsandbytes")
    report["bitsandbytes"] = bnb or "not installed (pip install 'ixcdoc[quant]' for --quant 4bit)"
    fa = version("flash-attn") if importlib.util.find_spec("flash_attn") else None
    report["flash-attn"] = fa or "not installed (optional; torch SDPA is used)"
    from ixcdoc.hub import cached_models, hub_cache_dir

    report["hub cache"] = str(hub_cache_dir())
    report["cached_models"] = [
        {"id": rid, "path": str(p), "gib": round(size / 2**30, 2)}
        for rid, p, size in cached_models()
    ]
    return report
