"""``run_ray``'s driver rules without Ray: its session and its dataset replaced by an
in-process stand-in that runs the real render task and model replica on each listed page.

What Ray would do by chance (deliver a retried batch twice, lose a page) the stand-in does on
purpose, so these rules are tested on every run, not only when a kill lands at the right
moment (tests/distributed/test_end_to_end.py has those runs, on a real Ray, marked ``ray``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ixcdoc.distributed import driver
from ixcdoc.distributed.listing import PageTask
from ixcdoc.distributed.workers import ModelReplica, render_row
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.records import PageRecord
from ixcdoc.tasks import EXTRACT
from tests.cli.helpers import read_records, text_pdf, text_png

JOB = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=4)


class InProcessRay:
    """Stands in for ``ray_session`` and ``run_pages``: each pass's tasks are rendered with
    ``render_row`` and run on one ``ModelReplica`` here. ``twice``: every record is delivered
    twice (a retried batch); ``lose_first_pass``: the last task of the first pass yields no
    record (its replica died for good). ``passes`` keeps the tasks of every pass."""

    def __init__(self, *, twice: bool = False, lose_first_pass: bool = False) -> None:
        self.twice = twice
        self.lose_first_pass = lose_first_pass
        self.passes: list[list[PageTask]] = []

    @contextlib.contextmanager
    def session(self, options: Any, replicas: int | None = None) -> Iterator[Any]:
        yield self

    def run_pages(
        self, ray: Any, tasks: list[PageTask], job: Job, sources: Sources, **kw: Any
    ) -> Iterator[PageRecord]:
        assert ray is self  # the session's handle reaches the dataset
        self.passes.append(list(tasks))
        replica = ModelReplica(job, kw["model"], "cpu", kw["quant"], batch_size=1)
        for i, task in enumerate(tasks):
            if self.lose_first_pass and len(self.passes) == 1 and i == len(tasks) - 1:
                return
            row = render_row(dataclasses.asdict(task), sources.password, sources.max_pixels)
            out = replica({"item": [row["item"]]})
            rec = PageRecord.from_dict(json.loads(out["record"][0]))
            yield rec
            if self.twice:
                yield rec


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _install(monkeypatch: pytest.MonkeyPatch, fake: InProcessRay) -> None:
    monkeypatch.setattr(driver, "ray_session", fake.session)
    monkeypatch.setattr(driver, "run_pages", fake.run_pages)


def test_records_delivered_twice_are_written_once(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    text_png(folder / "a.png", "alpha")
    text_pdf(folder / "two.pdf", ["page one", "page two"])
    fake = InProcessRay(twice=True)
    _install(monkeypatch, fake)
    out = tmp_path / "out.jsonl"
    stats = driver.run_ray(JOB, Sources([str(folder)]), model=ckpt, device="cpu", output=out)
    records = read_records(out)
    assert sorted((Path(r.source).name, r.page) for r in records) == [
        ("a.png", 1),
        ("two.pdf", 1),
        ("two.pdf", 2),
    ]
    assert stats.ok == 3 and stats.failed == 0
    assert len(fake.passes) == 1  # nothing was missing: no second pass


def test_a_page_missing_after_the_first_pass_is_run_again_alone(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    text_pdf(folder / "two.pdf", ["page one", "page two"])
    fake = InProcessRay(lose_first_pass=True)
    _install(monkeypatch, fake)
    out = tmp_path / "out.jsonl"
    stats = driver.run_ray(JOB, Sources([str(folder)]), model=ckpt, device="cpu", output=out)
    assert [[t.page for t in p] for p in fake.passes] == [[1, 2], [2]]
    assert sorted(r.page for r in read_records(out)) == [1, 2]
    assert stats.ok == 2 and stats.failed == 0


def test_the_same_bytes_under_two_names_are_scheduled_once(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    text_png(folder / "a.png", "alpha")
    shutil.copyfile(folder / "a.png", folder / "copy.png")  # same bytes, another name
    fake = InProcessRay()
    _install(monkeypatch, fake)
    out = tmp_path / "out.jsonl"
    stats = driver.run_ray(JOB, Sources([str(folder)]), model=ckpt, device="cpu", output=out)
    [[task]] = fake.passes
    assert Path(task.source).name == "a.png"
    [rec] = read_records(out)
    assert Path(rec.source).name == "a.png"
    assert stats.ok == 1 and stats.skipped == 1
