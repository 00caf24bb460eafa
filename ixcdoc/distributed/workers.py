"""What runs on the cluster: the render task (a function) and the model replica (an actor)."""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import TYPE_CHECKING, Any

from ixcdoc.distributed.listing import PageTask, is_uri, open_uri
from ixcdoc.pagerun import Job, PageRunner, open_pages
from ixcdoc.reading import PageItem, read_page

if TYPE_CHECKING:
    from ixcdoc.records import PageRecord

# Rendering a page is light next to the model: a fraction of a CPU leaves the rest to the
# replicas, and a CPU-only cluster never has its render tasks wait behind the actors.
RENDER_CPUS = 0.25


def render_row(
    row: dict[str, Any], password: str | None, max_pixels: int | None, drafts: bool = False
) -> dict[str, Any]:
    """Open a listed page's file, render and blank-check the page (a Ray CPU task).

    The page is read by ``reading.read_page``, the reader of one machine, so it carries the
    same flags (``repaired``, ``type_mismatch``, ``low_dpi``, ...) and, with ``drafts`` (the
    job's ``Job.drafts``), its text layer as the model's draft. The result travels as one
    pickled ``PageItem`` (a PIL image and, if the page could not be read, its error), so the
    page fails alone, as on one machine.
    """
    from ixcdoc.errors import InputError
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_document

    task = PageTask(**{k: row[k] for k in ("source", "path", "sha256", "page", "page_count")})
    item = PageItem(task.source, task.sha256, task.page, task.page_count)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        opened = (
            open_uri(task.path, password, max_pixels)
            if is_uri(task.path)
            else open_document(task.path, source=task.source, password=password, max_pixels=limit)
        )
        with opened as doc:
            if doc.sha256 != task.sha256:
                raise InputError(task.source, "changed while the run was listing it", code="input")
            item = read_page(doc, task.page, source=task.source, draft=drafts)
    except InputError as e:
        item.error = e
    return {**row, "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}


class ModelReplica:
    """One model replica (a Ray actor): loads the model once, turns pages into records."""

    def __init__(
        self, job: Job, model: str, device: str, quant: str, batch_size: int | None = 1
    ) -> None:
        import socket

        from ixcdoc.runtime import load

        self.job = job
        self.batch_size = batch_size  # pages in flight on this replica's engine (1: chat)
        # ``model`` is the driver's name for it (a folder's absolute path, or a hub id), so
        # the records name it as one machine would; the revision is the loaded model's.
        self.runner = PageRunner(job, model, None, device)
        self.runner.attach(load(model, device=device, quant=quant))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Records (as JSON lines) for a batch of rendered pages."""
        import numpy as np

        items: list[PageItem] = [pickle.loads(blob) for blob in batch["item"]]
        records = self._records(items)
        out = [dataclasses.replace(rec, worker=self.worker).to_json() for rec in records]
        return {"record": np.array(out, dtype=object)}

    def _records(self, items: list[PageItem]) -> list[PageRecord]:
        """One record per page: one at a time with ``chat``, or all of the batch in flight on
        the batched engine (the same records: tests/test_batch.py), by ``batch.run``'s rule
        (``pagerun.open_pages``); a call of one greedy page needs no engine."""
        one_page = len(items) == 1 and self.job.num_beams == 1
        pages = open_pages(self.runner, 1 if one_page else self.batch_size)
        done: dict[int, PageRecord] = {}
        try:
            for item in items:
                rec = self.runner.settled(item) or pages.submit(item)
                if rec is not None:
                    done[id(item)] = rec
            while pages.busy:
                for item, rec in pages.step():
                    done[id(item)] = rec
        finally:
            pages.close()
        return [done[id(item)] for item in items]
