"""Answering a benchmark: every question of a benchmark through the model into records.

``run_eval`` reads the benchmark, skips what an existing records file already holds, answers
the rest through ``answer_all`` and scores each answer as it arrives. ``answer_all`` is the one
place that talks to the model: it uses the batched engine (``DocModel.chat_batch``) when the
model has it and ``DocModel.chat`` question by question otherwise. A question over several
pages (MP-DocVQA) is answered from the page ``ask`` would choose: every page screened by the
model (``screening.choose_among``), the best one answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.evaluation.datasets import Benchmark, EvalItem, benchmark, read_items
from ixcdoc.evaluation.metrics import score
from ixcdoc.evaluation.results import (
    EvalKey,
    EvalState,
    key_of,
    make_record,
    open_eval_output,
)

if TYPE_CHECKING:
    from ixcdoc.ranking import PageChoice

BATCH_SIZE = 8  # questions handed to chat_batch at once


@dataclass
class EvalJob:
    """One question to answer: the item, the text sent, the tier and the record key."""

    item: EvalItem
    query: str
    hd: int | None  # None until the native size is known (auto tier)
    key: EvalKey
    choice: PageChoice | None = None  # a multi-page question: the page screening chose
    screen_seconds: float = 0.0  # spent choosing it (part of the question's seconds)

    @property
    def image(self) -> Path:
        """The page to answer from: the one chosen among the question's pages, or its only."""
        if self.choice is not None:
            return self.item.pages[self.choice.pages[0] - 1]
        return self.item.image


@dataclass
class Outcome:
    """What ``answer_all`` yields per job: the Answer or the error, and the seconds spent."""

    job: EvalJob
    answer: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    hd: int | None = None


@dataclass
class EvalSummary:
    """The result of ``run_eval``: counts for this run and the records of the selection."""

    benchmark: str
    split: str
    hd_setting: str
    total: int  # questions selected (after --limit)
    answered: int = 0  # answered in this run (ok or error)
    failed: int = 0  # of those, errors
    skipped: int = 0  # done by an earlier run
    skipped_failed: int = 0  # failed earlier, not retried (no --redo-failed)
    output: Path | None = None
    repaired_bytes: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # latest per selected question


def _open_image(path: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise IxcdocError(f"{path}: image not found", code="not_found") from None
    except OSError as e:
        raise IxcdocError(f"{path}: cannot read the image: {e}", code="unreadable") from None


def _tier(model: Any, job: EvalJob, image: Any, max_new_tokens: int) -> int:
    """The job's fixed tier, or the planner's choice (ask preset) for the image's native size."""
    if job.hd is not None:
        return job.hd
    from ixcdoc.planning import choose_tier
    from ixcdoc.tasks import ASK

    w, h = image.size  # PIL gives (W, H)
    gpu = model.gpu_budget() if hasattr(model, "gpu_budget") else None
    choice = choose_tier(
        h,
        w,
        ASK,
        cfg=model.config,
        gpu=gpu,
        quant=getattr(model, "precision", "bf16"),
        max_new_tokens=max_new_tokens,
    )
    return choice.hd


def answer_all(
    model: Any,
    jobs: Iterable[EvalJob],
    *,
    max_new_tokens: int,
    batch_size: int | None = None,
    num_beams: int = 1,
) -> Iterator[Outcome]:
    """Answer every job, in order; batched through ``model.chat_batch`` when the model has it.

    A question over several pages is first given its page (``choose_page``: the model screens
    them all). An error in one question (a missing image, out of memory) becomes that
    question's outcome; the others go on. A batch that fails as a whole is retried question by
    question, so the failure lands on the question that caused it.
    """
    batched = hasattr(model, "chat_batch")
    batch_size = batch_size or BATCH_SIZE
    pending: list[tuple[EvalJob, Any, int]] = []
    beams = {"num_beams": num_beams} if num_beams != 1 else {}  # greedy: chat's own default

    def one(job: EvalJob, image: Any, hd: int) -> Outcome:
        t0 = time.perf_counter()
        try:
            ans = model.chat(
                [image],
                job.query,
                hd=hd,
                meta_instruction="",
                max_new_tokens=max_new_tokens,
                **beams,
            )
        except (IxcdocError, RuntimeError, ValueError) as e:
            if hasattr(model, "release_memory"):
                model.release_memory()
            seconds = time.perf_counter() - t0 + job.screen_seconds
            return Outcome(job, error=e, seconds=seconds, hd=hd)
        seconds = time.perf_counter() - t0 + job.screen_seconds
        return Outcome(job, answer=ans, seconds=seconds, hd=hd)

    def flush() -> Iterator[Outcome]:
        if not pending:
            return
        from ixcdoc import ChatRequest  # type: ignore[attr-defined]  # the engine's request

        requests = [
            ChatRequest(
                [image],
                job.query,
                hd=hd,
                max_new_tokens=max_new_tokens,
                meta_instruction="",
                **beams,
            )
            for job, image, hd in pending
        ]
        t0 = time.perf_counter()
        try:
            answers = model.chat_batch(requests)
        except (IxcdocError, RuntimeError, ValueError):
            if hasattr(model, "release_memory"):
                model.release_memory()
            for job, image, hd in pending:
                yield one(job, image, hd)
        else:
            each = (time.perf_counter() - t0) / len(pending)  # the batch's time, shared
            for (job, _, hd), ans in zip(pending, answers, strict=True):
                yield Outcome(job, answer=ans, seconds=each + job.screen_seconds, hd=hd)
        pending.clear()

    for job in jobs:
        t0 = time.perf_counter()
        try:
            if job.item.pages:
                job.choice = choose_page(model, job.item)
                job.screen_seconds = time.perf_counter() - t0
            image = _open_image(job.image)
            hd = _tier(model, job, image, max_new_tokens)
        except (IxcdocError, RuntimeError, ValueError) as e:  # the screening's too
            yield Outcome(job, error=e, seconds=time.perf_counter() - t0)
            continue
        if not batched:
            yield one(job, image, hd)
            continue
        pending.append((job, image, hd))
        if len(pending) >= batch_size:
            yield from flush()
    if batched:
        yield from flush()


def choose_page(model: Any, item: EvalItem) -> PageChoice:
    """The page of a multi-page question to answer from, chosen as ``ask`` chooses among pages
    without a text layer: all screened in one batch, the best one (an error names the page
    image that could not be read, or the screening's failure)."""
    from ixcdoc.screening import choose_among

    images = [_open_image(p) for p in item.pages]
    return choose_among(model, images, item.question)


def _hd_setting(bench: Benchmark, hd: int | str | None) -> tuple[str, int | None]:
    """The record's hd_setting and the fixed tier (None: chosen per question)."""
    if hd is None:
        return str(bench.hd), bench.hd
    if isinstance(hd, str):
        if hd.strip().lower() == "auto":
            return "auto", None
        from ixcdoc.tasks import parse_hd

        n = parse_hd(hd)
        return ("auto", None) if n is None else (str(n), n)
    if hd < 1:
        raise UsageError(f"--hd must be 'auto' or a whole number >= 1, got {hd}")
    return str(hd), hd


def _model_fields(model: Any) -> dict[str, Any]:
    return {
        "model": str(getattr(model, "model_id", None) or getattr(model, "path", "model")),
        "model_revision": getattr(model, "revision", None),
        "precision": getattr(model, "precision", None),
        "device": str(getattr(model, "device", "")) or None,
    }


def run_eval(
    model: Any,
    benchmark_name: str,
    data_dir: str | Path,
    *,
    limit: int | None = None,
    hd: int | str | None = None,
    split: str | None = None,
    max_new_tokens: int | None = None,
    output: str | Path | None = None,
    redo_failed: bool = False,
    progress: Callable[[dict[str, Any] | None], None] | None = None,
    items: Sequence[EvalItem] | None = None,
    num_beams: int = 1,
) -> EvalSummary:
    """Answer and score a benchmark's questions; append records to ``output`` (resumable).

    ``hd``: None for the benchmark's upstream tier, "auto" for the planner (ask preset), or a
    tier. ``num_beams`` > 1: beam search (records and the resume key carry it).
    ``progress(record)`` is called after each question (None for one skipped as done).
    ``items`` replaces reading ``data_dir`` (the caller read it already).
    """
    bench = benchmark(benchmark_name)
    split = split or bench.splits[0]
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UsageError(f"--beams must be a whole number >= 1, got {num_beams!r}")
    if redo_failed and output is None:
        raise UsageError("--redo-failed needs -o/--output (the file that records failures)")
    if items is None:
        items = read_items(bench.name, data_dir, split)
    selected = list(items)[:limit] if limit is not None else list(items)
    hd_setting, fixed = _hd_setting(bench, hd)
    mnt = max_new_tokens or bench.max_new_tokens
    # beams as in extract's page records: only when > 1 (null is greedy)
    fields = {**_model_fields(model), "num_beams": num_beams if num_beams > 1 else None}
    summary = EvalSummary(bench.name, split, hd_setting, total=len(selected))

    state = EvalState()
    writer = None
    if output is not None:
        # Locked before it is read, and for the whole run (as extract's -o).
        writer, state = open_eval_output(output)
        summary.output = Path(output)
        summary.repaired_bytes = state.repaired_bytes

    def key(item: EvalItem, query: str) -> EvalKey:
        return key_of(
            {
                "benchmark": bench.name,
                "split": split,
                "question_id": item.question_id,
                "prompt": query,
                "hd_setting": hd_setting,
                **fields,
            }
        )

    jobs: list[EvalJob] = []
    for item in selected:
        query = bench.query(item.question)
        k = key(item, query)
        if state.should_skip(k, redo_failed=redo_failed):
            if state.latest[k]["status"] == "ok":
                summary.skipped += 1
            else:
                summary.skipped_failed += 1
            if progress is not None:
                progress(None)
            continue
        jobs.append(EvalJob(item=item, query=query, hd=fixed, key=k))

    try:
        for out in answer_all(model, jobs, max_new_tokens=mnt, num_beams=num_beams):
            rec = _record(bench, split, hd_setting, fields, out)
            if writer is not None:
                writer.write_record(rec)
            state.add(rec)
            summary.answered += 1
            summary.failed += rec["status"] == "error"
            if progress is not None:
                progress(rec)
    finally:
        if writer is not None:
            writer.close()
    wanted = {key(item, bench.query(item.question)) for item in selected}
    summary.records = [r for k, r in state.latest.items() if k in wanted]
    return summary


def _record(
    bench: Benchmark, split: str, hd_setting: str, fields: dict[str, Any], out: Outcome
) -> dict[str, Any]:
    item = out.job.item
    choice = out.job.choice
    pages: dict[str, Any] = {}
    if item.pages:  # 0-based, as the dataset counts pages
        pages["answer_page_idx"] = item.answer_page
        if choice is not None:
            pages["predicted_page_idx"] = choice.pages[0] - 1
            if choice.scores:
                n = len(item.pages)
                pages["page_scores"] = [round(choice.scores[p], 6) for p in range(1, n + 1)]
    common = {
        "benchmark": bench.name,
        "split": split,
        "question_id": item.question_id,
        "question": item.question,
        "prompt": out.job.query,
        "answers": list(item.answers),
        "category": item.category,
        "metric": bench.metric,
        "hd_setting": hd_setting,
        "tier": out.hd,
        "seconds": round(out.seconds, 4) if out.seconds else None,
        **fields,
        **pages,
    }
    if out.error is not None:
        e = out.error
        code = e.code if isinstance(e, IxcdocError) else "error"
        return make_record(
            **common,
            status="error",
            error={"code": code, "message": str(e) or type(e).__name__},
        )
    ans = out.answer
    prediction = ans.text.strip()
    grid = getattr(ans, "grid", None)
    return make_record(
        **common,
        prediction=prediction,
        score=score(bench.metric, prediction, item.answers, item.category),
        status="ok",
        grid=list(grid) if grid else None,
        image_tokens=getattr(ans, "n_image_tokens", None),
        tokens=len(getattr(ans, "token_ids", []) or []),
    )
