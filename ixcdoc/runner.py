"""One page to one record: the task's prompt, the page's tier, the guards, and the ladder that
retries a page one tier lower when the GPU runs out of memory. Never raises for a page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import IxcdocError
from ixcdoc.planning import TierChoice, choose_tier, lower_tier
from ixcdoc.tasks import TaskPreset

if TYPE_CHECKING:
    from ixcdoc.gpu import GpuInfo
    from ixcdoc.inputs import Document, PageInfo, RenderedPage
    from ixcdoc.preprocess import HDImage
    from ixcdoc.reading import PageItem
    from ixcdoc.records import PageRecord, ResumeKey
    from ixcdoc.runtime import DocModel


@dataclass(frozen=True)
class Job:
    """What to do with every page: the task, the exact prompt, tier and length settings.

    ``question`` is set for ``ask``; ``top_k`` (ask only) reads the pages whose text layer
    best matches the question instead of every selected page.
    """

    task: TaskPreset
    prompt: str  # the instruction sent with the page (the question for ask)
    question: str | None = None
    hd: int | None = None  # None: automatic
    max_new_tokens: int | None = None
    top_k: int | None = None

    @property
    def hd_label(self) -> str:
        """The tier setting as records store it: "auto" or the number."""
        return "auto" if self.hd is None else str(self.hd)

    def choose_pages(self) -> Callable[[Document, list[int]], list[int]] | None:
        """The page filter for ``reading.read_pages``: BM25 ranking for ``ask --top-k``."""
        if self.question is None or self.top_k is None:
            return None
        from ixcdoc.reading import best_pages

        question, k = self.question, self.top_k
        return lambda doc, numbers: best_pages(doc, numbers, question, k)


def _is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error, raw from torch or as the runtime reports it (code oom)."""
    if isinstance(e, IxcdocError):
        return e.code == "oom"
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, oom)


@dataclass
class PageRunner:
    """A model (or None while none is loaded) and what every record says about it."""

    model_name: str
    revision: str | None = None
    device: str = "auto"
    model: DocModel | None = None
    gpu: GpuInfo | None = field(default=None, repr=False)

    @classmethod
    def loaded(cls, model: DocModel) -> PageRunner:
        """A runner over a loaded model, naming it as its records will."""
        return cls(
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

    def key(self, job: Job, sha256: str | None, source: str, page: int | None) -> ResumeKey:
        """The resume key of ``job`` on one page (or whole file) under this model."""
        from ixcdoc.records import make_key

        return make_key(
            content_sha256=sha256,
            source=source,
            page=page,
            task=job.task.name,
            prompt=job.prompt,
            hd_setting=job.hd_label,
            model=self.model_name,
            model_revision=self.revision,
        )

    def record(self, job: Job, item: PageItem, **fields: Any) -> PageRecord:
        """A record for ``item`` with the job's and the model's fields filled in."""
        from ixcdoc.records import PageRecord

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
        }
        base.update(fields)
        # The document's own flags (repaired, low_dpi, ...) go with every record of the page.
        base["flags"] = tuple(dict.fromkeys((*base.get("flags", ()), *item.flags)))
        return PageRecord(**base)

    def tier_for(self, job: Job, info: PageInfo) -> TierChoice:
        """The tier choice for a page of ``info``'s native size (needs the model)."""
        assert self.model is not None
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

    def run_page(
        self,
        item: PageItem,
        job: Job,
        *,
        on_start: Callable[[PageItem, int], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> PageRecord:
        """Run the job on one page and return its record (never raises for a page)."""
        from ixcdoc.guards import RepetitionGuard
        from ixcdoc.records import ErrorInfo, Timings

        if item.error is not None:
            return self.record(
                job, item, status="error", error=ErrorInfo.from_exception(item.error)
            )
        r = item.rendered
        assert r is not None
        render_ms = round(r.render_ms, 3)
        if item.blank:
            return self.record(
                job,
                item,
                status="ok",
                text="",
                flags=("blank",),
                timings=Timings(render_ms=render_ms),
            )
        model = self.model
        assert model is not None, "load the model before running pages"
        if item.tier is None:
            item.tier = self.tier_for(job, r.info)
        tier = item.tier.hd
        flags: list[str] = []
        max_new = job.max_new_tokens or job.task.max_new_tokens

        def failed(code: str, why: str) -> PageRecord:
            return self.record(
                job,
                item,
                status="error",
                tier=tier,
                flags=tuple(flags),
                error=ErrorInfo(code, f"{item.source} page {item.page}: {why}"),
                timings=Timings(render_ms=render_ms),
            )

        while True:
            guard = RepetitionGuard()
            stream = model.tokenizer.stream() if on_text is not None else None

            def on_token(tid: int, guard: RepetitionGuard = guard, stream: Any = stream) -> bool:
                keep = guard(tid)
                if stream is not None and on_text is not None:
                    delta = stream.push(tid)
                    if delta:
                        on_text(delta)
                return keep

            if on_start is not None:
                on_start(item, tier)
            try:
                page = item.hd_image if item.hd_image is not None else r.image
                ans = model.chat(
                    [page], job.prompt, hd=tier, max_new_tokens=max_new, on_token=on_token
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
                    return failed(ErrorInfo.from_exception(e).code, why)
            # Outside the except block: the exception's traceback holds the failed forward's
            # tensors until it is gone, and only then can the cached blocks be released.
            model.release_memory()
            lower = lower_tier(r.info.native_h, r.info.native_w, tier, model.config.tile)
            if lower is None:
                return failed("oom", f"out of GPU memory even at HD{tier}; try --quant 4bit")
            tier = lower
            if "tier_fallback" not in flags:
                flags.append("tier_fallback")
        text = ans.text
        if guard.triggered:
            flags.append("repetition")
            text = model.tokenizer.decode(guard.trimmed())
        t = ans.timings
        return self.record(
            job,
            item,
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
