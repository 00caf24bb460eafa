"""What runs on the cluster (ixcdoc/distributed/workers.py), without Ray: the render task
reads a page exactly as one machine does (its flags), and a model replica turns pages into
the records of one machine, on ``chat`` or on the batched engine."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pymupdf
import pytest

from ixcdoc.batch import run
from ixcdoc.distributed.workers import ModelReplica, render_row
from ixcdoc.hub import model_name
from ixcdoc.inputs import Sources, file_sha256
from ixcdoc.pagerun import Job
from ixcdoc.reading import PageItem, read_pages
from ixcdoc.records import PageRecord, latest_records
from ixcdoc.tasks import EXTRACT
from ixcdoc.tinyckpt import write_tiny_checkpoint
from tests.cli.helpers import text_png
from tests.distributed.helpers import comparable
from tests.inputs.builders import add_text_page


def _damaged_pdf(path: Path) -> Path:
    doc = pymupdf.open()
    doc.new_page(width=200, height=150).insert_text((10, 40), "page one words")
    data = doc.tobytes()
    path.write_bytes(data[: data.rfind(b"startxref")])  # no xref offset: MuPDF rebuilds it
    return path


def _tiny_text_pdf(path: Path) -> Path:
    """4-pt text on a 1440-pt page: under a 100,000-pixel cap it is flagged low_dpi."""
    doc = pymupdf.open()
    add_text_page(
        doc, [(4.0, "The quick brown fox jumps over the lazy dog")] * 20, size=(1440, 1440)
    )
    doc.save(path)
    return path


def test_the_render_task_reads_a_page_as_one_machine_does(tmp_path: Path) -> None:
    """Ray records carry the flags one machine writes: the render task reads each page with
    the reader of ``read_pages``, so its PageItem is the same, flags and draft included."""
    folder = tmp_path / "docs"
    folder.mkdir()
    _damaged_pdf(folder / "damaged.pdf")
    text_png(folder / "shot.png", "PNG bytes").rename(folder / "png-named.pdf")
    _tiny_text_pdf(folder / "tiny-text.pdf")
    limit = 100_000
    local = [
        it
        for it in read_pages(Sources([str(folder)], max_pixels=limit), drafts=True)
        if isinstance(it, PageItem)
    ]
    assert sorted(f for it in local for f in it.flags) == ["low_dpi", "repaired", "type_mismatch"]
    assert sorted(Path(it.source).name for it in local if it.draft) == [
        "damaged.pdf",
        "tiny-text.pdf",
    ]
    for it in local:
        row = {
            "source": it.source,
            "path": it.source,
            "sha256": file_sha256(it.source),
            "page": it.page,
            "page_count": it.page_count,
        }
        remote = pickle.loads(render_row(row, None, limit, drafts=True)["item"])
        assert remote.flags == it.flags and remote.blank == it.blank and remote.error is None
        assert remote.draft == it.draft
        assert dataclasses.astuple(remote.rendered.info) == dataclasses.astuple(it.rendered.info)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("beams", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_replica_writes_the_record_batch_run_writes(
    ckpt: Path, tmp_path: Path, beams: int, batch_size: int
) -> None:
    """The same page, job and batch size: the record of one machine (beam search included,
    which only the engine does, whatever the batch size)."""
    job = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=6, num_beams=beams)
    page = text_png(tmp_path / "a.png", "Total 12.50", size=(300, 200))
    out = tmp_path / "one.jsonl"
    run(job, Sources([str(page)]), model=ckpt, device="cpu", output=out, batch_size=batch_size)
    (want,) = latest_records(out)
    row = {
        "source": str(page),
        "path": str(page),
        "sha256": file_sha256(page),
        "page": 1,
        "page_count": 1,
    }
    rendered = render_row(row, None, None)
    replica = ModelReplica(job, model_name(ckpt), "cpu", "auto", batch_size=batch_size)
    [line] = replica({"item": np.array([rendered["item"]], dtype=object)})["record"]
    got = PageRecord.from_dict(json.loads(line))
    assert got.worker and comparable(got) == comparable(want)
