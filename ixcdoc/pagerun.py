"""Running a job on pages, one page to one record: ``Job`` (what to do with every page),
``PageRunner`` (the job and the model: records, tiers, the guards, and ``after_failure``, the
one rule that makes a failed page its error record or retries it one tier lower when the GPU
runs out of memory), and where pages run: ``ChatPages`` (one at a time with ``chat``) or
``EnginePages`` (many in flight on the batched engine), behind one interface
(``open_pages``). Never raises for a page."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import IxcdocError
from ixcdoc.planning import TierChoice, choose_tier, lower_tier
from ixcdoc.tasks import TaskPreset

if TYPE_CHECKING:
    from ixcdoc.answer import Answer
    from ixcdoc.engine import Engine, Handle
    from ixcdoc.gpu import GpuInfo
    from ixcdoc.guards import RepetitionGuard
    from ixcdoc.inputs import Document, PageInfo, RenderedPage
    from ixcdoc.preprocess import HDImage
    from ixcdoc.ranking import PageChoice
    from ixcdoc.reading import PageItem
    from ixcdoc.records import PageRecord, ResumeKey
    from ixcdoc.runtime import DocModel


@dataclass(frozen=True)
class Job:
    """What to do with every page: the task, the exact prompt, tier and length settings.

    ``question`` is set for ``ask``; ``top_k`` (ask only) reads the best pages for the question
    instead of every selected page (``ixcdoc.screening``). ``speculate`` "auto": speculative
    decoding, each page with a text layer drafting from it (``drafts``); "off": plain decoding.
    """

    task: TaskPreset
    prompt: str  # the instruction sent with the page (the question for ask)
    question: str | None = None
    hd: int | None = None  # None: automatic
    max_new_tokens: int | None = None
    top_k: int | None = None
    num_beams: int = 1  # > 1: beam search (transformers' rules), on the batched engine
    speculate: str = "auto"  # "auto" | "off" (engine.request.SPECULATE_MODES)

    def __post_init__(self) -> None:
        from ixcdoc.engine.request import check_speculate
        from ixcdoc.tokenizer import check_text

        check_speculate(self.speculate)
        # Before any model loads: a byte that is not UTF-8 is one usage line, not a traceback.
        if self.question is not None:
            check_text(self.question, "the question")
        check_text(self.prompt, "the question" if self.prompt == self.question else "the prompt")

    @property
    def new_tokens(self) -> int:
        """The generation limit: the job's, else the task's."""
        return self.max_new_tokens or self.task.max_new_tokens

    @property
    def drafts(self) -> bool:
        """Whether pages carry their text layer as the model's draft: speculation on, and one
        beam (beams decode as today). Every task drafts: a transcription copies the page's
        text, and answers and chart tables quote its words and numbers; where they do not, the
        engine stops drafting for that page after a few misses, and the text costs the reader
        one extraction per page."""
        return self.speculate == "auto" and self.num_beams == 1

    @property
    def hd_label(self) -> str:
        """The tier setting as records store it: "auto" or the number."""
        return "auto" if self.hd is None else str(self.hd)

    def choose_pages(self) -> Callable[[Document, list[int]], PageChoice] | None:
        """The page filter for ``reading.read_pages`` from the text layer alone (no model):
        ``ask --top-k``'s BM25 ranking, every page it cannot rule out where it cannot rank
        (``batch.run`` screens those with the model, ``screening.ask_choice``)."""
        if self.question is None or self.top_k is None:
            return None
        from ixcdoc.screening import text_choice

        question, k = self.question, self.top_k
        return lambda doc, numbers: text_choice(doc, numbers, question, k)


def _is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error, raw from torch or as the runtime reports it (code oom)."""
    if isinstance(e, IxcdocError):
        return e.code == "oom"
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, oom)


@dataclass(frozen=True)
class Failure:
    """Why a page's generation failed, kept without the exception: its traceback holds the
    failed forward's tensors, which must be gone before a retry can have their memory."""

    oom: bool
    code: str
    why: str

    @classmethod
    def of(cls, e: BaseException) -> Failure:
        """What ``e`` means for the page: out of GPU memory, or its error record's code and
        message (docs/output.md: an unexpected failure is code "error", naming the exception)."""
        from ixcdoc.records import ErrorInfo

        why = e.message if isinstance(e, IxcdocError) else f"{type(e).__name__}: {e}"
        return cls(_is_oom(e), ErrorInfo.from_exception(e).code, why)


@dataclass(frozen=True)
class Retry:
    """Run the page again at ``tier`` (one lower), its records flagged with ``flags``."""

    tier: int
    flags: list[str]


@dataclass
class PageRunner:
    """The job, a model (or None while none is loaded) and what every record says about them."""

    job: Job
    model_name: str
    revision: str | None = None
    device: str = "auto"
    model: DocModel | None = None
    gpu: GpuInfo | None = field(default=None, repr=False)

    @classmethod
    def loaded(cls, job: Job, model: DocModel) -> PageRunner:
        """A runner of ``job`` over a loaded model, naming it as its records will."""
        return cls(
            job=job,
            model_name=str(model.model_id),
            revision=model.revision,
            device=str(model.device),
            model=model,
            gpu=model.gpu_budget(),
        )

    def attach(self, model: DocModel) -> None:
        """Use ``model`` from now on (loaded after the run started)."""
        self.model = model
        self.revision = model.revision
        self.device = str(model.device)
        self.gpu = model.gpu_budget()

    @property
    def precision(self) -> str | None:
        return None if self.model is None else str(self.model.precision)

    def key(self, sha256: str | None, source: str, page: int | None) -> ResumeKey:
        """The resume key of the job on one page (or whole file) under this model."""
        from ixcdoc.records import make_key

        job = self.job
        return make_key(
            content_sha256=sha256,
            source=source,
            page=page,
            task=job.task.name,
            prompt=job.prompt,
            hd_setting=job.hd_label,
            model=self.model_name,
            model_revision=self.revision,
            num_beams=job.num_beams if job.num_beams > 1 else None,
        )

    def record(self, item: PageItem, **fields: Any) -> PageRecord:
        """A record for ``item`` with the job's and the model's fields filled in."""
        from ixcdoc.records import PageRecord

        job = self.job
        info = item.rendered.info if item.rendered is not None else None
        base: dict[str, Any] = {
            "source": item.source,
            "content_sha256": item.sha256,
            "page": item.page,
            "page_count": item.page_count,
            "task": job.task.name,
            "question": job.question,
            "prompt": job.prompt,
            "hd_setting": job.hd_label,
            "native_size": None if info is None else (info.native_h, info.native_w),
            "render_dpi": None if info is None else info.dpi,
            "model": self.model_name,
            "model_revision": self.revision,
            "precision": self.precision,
            "device": self.device,
            "num_beams": job.num_beams if job.num_beams > 1 else None,
            "screening": item.screening,
        }
        base.update(fields)
        # The document's own flags (repaired, low_dpi, ...) go with every record of the page.
        base["flags"] = tuple(dict.fromkeys((*base.get("flags", ()), *item.flags)))
        return PageRecord(**base)

    def tier_for(self, info: PageInfo) -> TierChoice:
        """The tier choice for a page of ``info``'s native size (needs the model)."""
        assert self.model is not None
        job = self.job
        return choose_tier(
            info.native_h,
            info.native_w,
            job.task,
            hd=job.hd,
            cfg=self.model.config,
            gpu=self.gpu,
            quant=str(self.model.precision),
            max_new_tokens=job.max_new_tokens,
        )

    def hd_image(self, rendered: RenderedPage, choice: TierChoice) -> HDImage:
        """The page resized for its tier (made on the reader thread)."""
        from ixcdoc.preprocess import hd_image

        assert self.model is not None
        return hd_image(rendered.image, choice.hd, self.model.config.tile)

    def settled(self, item: PageItem) -> PageRecord | None:
        """The record of a page that needs no model (unreadable, or blank), else None."""
        from ixcdoc.records import ErrorInfo, Timings

        if item.error is not None:
            return self.record(item, status="error", error=ErrorInfo.from_exception(item.error))
        if item.blank:
            assert item.rendered is not None
            return self.record(
                item,
                status="ok",
                text="",
                flags=("blank",),
                timings=Timings(render_ms=round(item.rendered.render_ms, 3)),
            )
        return None

    def first_tier(self, item: PageItem) -> int:
        """The tier a page starts at (chosen once: by the reader, or here)."""
        assert item.rendered is not None
        if item.tier is None:
            item.tier = self.tier_for(item.rendered.info)
        return item.tier.hd

    def lower(self, item: PageItem, tier: int) -> int | None:
        """The tier to retry a page at after running out of GPU memory (None: none left)."""
        assert self.model is not None and item.rendered is not None
        self.model.release_memory()
        info = item.rendered.info
        return lower_tier(info.native_h, info.native_w, tier, self.model.config.tile)

    def failed(
        self, item: PageItem, tier: int, flags: list[str], code: str, why: str
    ) -> PageRecord:
        """The error record of a page the model could not finish."""
        from ixcdoc.records import ErrorInfo, Timings

        assert item.rendered is not None
        return self.record(
            item,
            status="error",
            tier=tier,
            flags=tuple(flags),
            error=ErrorInfo(code, f"{item.source} page {item.page}: {why}"),
            timings=Timings(render_ms=round(item.rendered.render_ms, 3)),
        )

    def answered(
        self, item: PageItem, ans: Answer, guard: RepetitionGuard, flags: list[str]
    ) -> PageRecord:
        """The record of a page the model answered (a stopped loop is trimmed and flagged)."""
        from ixcdoc.records import Timings

        assert self.model is not None and item.rendered is not None
        text = ans.text
        if guard.triggered:
            flags = [*flags, "repetition"]
            text = self.model.tokenizer.decode(guard.trimmed())
        t = ans.timings
        return self.record(
            item,
            status="ok",
            text=text.strip(),
            flags=tuple(flags),
            tier=ans.hd,
            grid=ans.grid,
            image_tokens=ans.n_image_tokens,
            timings=Timings(
                render_ms=round(item.rendered.render_ms, 3),
                preprocess_ms=t.get("vision_ms"),
                prefill_ms=t.get("prefill_ms"),
                decode_ms=t.get("decode_ms"),
                tokens=len(ans.token_ids),
                draft_tokens=ans.draft_tokens,
                accepted_tokens=ans.accepted_tokens,
            ),
        )

    def image(self, item: PageItem) -> Any:
        """What the model gets for a page: the HD image made ahead, or the rendered page."""
        assert item.rendered is not None
        return item.hd_image if item.hd_image is not None else item.rendered.image

    def after_failure(
        self, item: PageItem, tier: int, flags: list[str], failure: Failure
    ) -> PageRecord | Retry:
        """The one rule for a page whose generation at ``tier`` failed, on ``chat`` and on the
        engine alike: its error record, or, out of GPU memory, a retry one tier lower (flagged
        ``tier_fallback``) until there is none lower (then its ``oom`` record)."""
        if not failure.oom:
            # docs/output.md: an unexpected failure is this page's error record; the batch
            # goes on.
            return self.failed(item, tier, flags, failure.code, failure.why)
        lower = self.lower(item, tier)
        if lower is None:
            why = f"out of GPU memory even at HD{tier}; try --quant 4bit"
            return self.failed(item, tier, flags, "oom", why)
        return Retry(lower, flags if "tier_fallback" in flags else [*flags, "tier_fallback"])

    def run_page(
        self,
        item: PageItem,
        *,
        on_start: Callable[[PageItem, int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_count: Callable[[], None] | None = None,
    ) -> PageRecord:
        """Run the job on one page with ``chat`` and return its record (never raises).
        ``on_text`` gets the text as it is generated, ``on_count()`` is called per token."""
        from ixcdoc.guards import RepetitionGuard

        done = self.settled(item)
        if done is not None:
            return done
        model = self.model
        assert model is not None, "load the model before running pages"
        step: PageRecord | Retry = Retry(self.first_tier(item), [])
        while isinstance(step, Retry):
            tier, flags = step.tier, step.flags
            guard = RepetitionGuard()
            on_token = TokenCallback(guard, model, on_text, on_count)
            if on_start is not None:
                on_start(item, tier)
            try:
                ans = model.chat(
                    [self.image(item)],
                    self.job.prompt,
                    hd=tier,
                    max_new_tokens=self.job.new_tokens,
                    on_token=on_token,
                    draft=item.draft,
                    speculate=self.job.speculate,
                )
                on_token.flush()
                return self.answered(item, ans, guard, flags)
            except Exception as e:
                failure = Failure.of(e)
            # Outside the except block: the exception's traceback holds the failed forward's
            # tensors until it is gone, and only then can the cached blocks be released.
            step = self.after_failure(item, tier, flags, failure)
        return step


class TokenCallback:
    """``on_token`` for one generation: the repetition guard, streamed text and a token count
    if wanted."""

    def __init__(
        self,
        guard: RepetitionGuard,
        model: DocModel,
        on_text: Callable[[str], None] | None,
        on_count: Callable[[], None] | None = None,
    ) -> None:
        self.guard = guard
        self.on_text = on_text
        self.on_count = on_count
        self.stream = model.tokenizer.stream() if on_text is not None else None

    def __call__(self, tid: int) -> bool:
        keep = self.guard(tid)
        if self.on_count is not None:
            self.on_count()
        if self.stream is not None and self.on_text is not None:
            delta = self.stream.push(tid)
            if delta:
                self.on_text(delta)
        return keep

    def flush(self) -> None:
        """Emit a character split across the last tokens."""
        if self.stream is not None and self.on_text is not None:
            tail = self.stream.flush()
            if tail:
                self.on_text(tail)


@dataclass
class _InFlight:
    item: PageItem
    tier: int
    flags: list[str]
    guard: RepetitionGuard
    on_token: TokenCallback
    on_start: Callable[[PageItem, int], None] | None = None
    on_text: Callable[[str], None] | None = None
    on_count: Callable[[], None] | None = None


class EnginePages:
    """Many pages in flight on the batched engine: submit pages, collect records as they
    finish (not in input order), retrying a page one tier lower when its prefill runs out of
    GPU memory, without disturbing the others."""

    def __init__(self, runner: PageRunner, engine: Engine) -> None:
        self.runner = runner
        self.job = runner.job
        self.engine = engine
        self._inflight: dict[int, _InFlight] = {}
        self._done: list[Handle] = []

    @property
    def busy(self) -> int:
        """Pages submitted and not yet collected."""
        return len(self._inflight)

    @property
    def capacity(self) -> int:
        """Pages that fit the engine's slots at once (each beam takes a slot)."""
        return max(1, self.engine.n_slots // self.job.num_beams)

    def close(self) -> None:
        """Free the engine's batch-sized KV cache (the model can run ``chat`` again)."""
        assert self.runner.model is not None
        self.runner.model.free_cache()

    def submit(
        self,
        item: PageItem,
        *,
        tier: int | None = None,
        flags: list[str] | None = None,
        on_start: Callable[[PageItem, int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_count: Callable[[], None] | None = None,
    ) -> PageRecord | None:
        """Queue a page; a record right away when the page cannot be submitted."""
        from ixcdoc.engine import ChatRequest
        from ixcdoc.guards import RepetitionGuard

        assert self.runner.model is not None
        tier = self.runner.first_tier(item) if tier is None else tier
        flags = [] if flags is None else flags
        guard = RepetitionGuard()
        on_token = TokenCallback(guard, self.runner.model, on_text, on_count)
        request = ChatRequest(
            [self.runner.image(item)],
            self.job.prompt,
            hd=tier,
            max_new_tokens=self.job.new_tokens,
            num_beams=self.job.num_beams,
            draft=item.draft,
            speculate=self.job.speculate,
        )
        if on_start is not None:
            on_start(item, tier)
        try:
            handle = self.engine.submit(request, on_token=on_token, on_done=self._done.append)
        except IxcdocError as e:  # e.g. a prompt longer than the engine's slots
            return self.runner.failed(item, tier, flags, e.code, e.message)
        self._inflight[handle.id] = _InFlight(
            item, tier, flags, guard, on_token, on_start, on_text, on_count
        )
        return None

    def step(self) -> list[tuple[PageItem, PageRecord]]:
        """One engine step; the records of the pages that finished in it."""
        # A step that raises has already failed the sequences it ran: their handles say why.
        with contextlib.suppress(Exception):
            self.engine.step()
        out = []
        done = list(self._done)  # handles append to this list object: empty it in place
        self._done.clear()
        for handle in done:
            f = self._inflight.pop(handle.id)
            rec = self._finished(f, handle)
            if rec is not None:
                out.append((f.item, rec))
        return out

    def _finished(self, f: _InFlight, handle: Handle) -> PageRecord | None:
        """The record of a finished page, or None when it went back in one tier lower."""
        if handle.error is None:
            assert handle.answer is not None
            f.on_token.flush()
            return self.runner.answered(f.item, handle.answer, f.guard, f.flags)
        step = self.runner.after_failure(f.item, f.tier, f.flags, Failure.of(handle.error))
        if not isinstance(step, Retry):
            return step
        return self.submit(
            f.item,
            tier=step.tier,
            flags=step.flags,
            on_start=f.on_start,
            on_text=f.on_text,
            on_count=f.on_count,
        )

    @classmethod
    def for_run(cls, runner: PageRunner, batch_size: int | None) -> EnginePages:
        """The batched engine for a run: ``batch_size`` pages in flight (None: what memory
        allows), each beam in its own slot, slots long enough for the largest page the job
        can send."""
        from ixcdoc.sizing import SlotNeed, slots_that_fit

        model, job = runner.model, runner.job
        assert model is not None
        hd = job.hd if job.hd is not None else job.task.hd_ceiling
        need = SlotNeed.page(
            model.config, model.tokenizer, job.prompt, hd, job.new_tokens, beams=job.num_beams
        )
        positions = need.positions(model.config)
        n = batch_size if batch_size is not None else slots_that_fit(model, need, positions)
        slots = max(1, n) * job.num_beams  # every beam of a page has its own slot
        return cls(runner, model.engine(n_slots=slots, max_len=positions))


class ChatPages:
    """One page at a time with ``chat``, behind ``EnginePages``' interface (``submit`` returns
    the page's record at once), so a run has one page loop for both."""

    busy = 0  # nothing is ever left in flight
    capacity = 1

    def __init__(self, runner: PageRunner) -> None:
        self.runner = runner

    def submit(
        self,
        item: PageItem,
        *,
        on_start: Callable[[PageItem, int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_count: Callable[[], None] | None = None,
    ) -> PageRecord:
        """Run the page now (``PageRunner.run_page``): its record."""
        return self.runner.run_page(item, on_start=on_start, on_text=on_text, on_count=on_count)

    def step(self) -> list[tuple[PageItem, PageRecord]]:
        """Nothing: every page finished in ``submit``."""
        return []

    def close(self) -> None:
        """Nothing to free."""


def open_pages(runner: PageRunner, batch_size: int | None) -> EnginePages | ChatPages:
    """Where a run's pages go: the batched engine, unless one page at a time with ``chat`` was
    asked for (``batch_size`` 1) and the job needs no beams (beam search is the engine's)."""
    if batch_size == 1 and runner.job.num_beams == 1:
        return ChatPages(runner)
    return EnginePages.for_run(runner, batch_size)
