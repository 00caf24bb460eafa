"""The Ray driver's listing (ixcdoc/distributed/listing.py), without Ray: it selects and skips
pages by the rules of one machine, so on a rerun it schedules exactly the pages ``batch.run``
would run and counts the others as ``batch.run`` does; stdin is refused; URIs are told apart
from paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from ixcdoc.batch import BatchStats, Events, run
from ixcdoc.distributed.listing import is_uri, list_pages
from ixcdoc.errors import UsageError
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job, PageRunner
from ixcdoc.records import load_existing
from ixcdoc.tasks import EXTRACT
from ixcdoc.tinyckpt import write_tiny_checkpoint
from tests.cli.helpers import corrupt_pdf, text_pdf, text_png

JOB = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


class Seen(Events):
    def __init__(self) -> None:
        self.documents: list[tuple[str, int]] = []
        self.skipped_pages: list[tuple[str, int | None]] = []

    def opened(self, source: str, pages: int, *, single: bool) -> None:  # type: ignore[override]
        self.documents.append((Path(source).name, pages))

    def skipped(self, item: object) -> None:
        self.skipped_pages.append((Path(item.source).name, item.page))  # type: ignore[attr-defined]


def _list(ckpt: Path, folder: Path, out: Path, *, redo_failed: bool) -> tuple:
    from ixcdoc.hub import local_revision, model_name

    runner = PageRunner(JOB, model_name(ckpt), local_revision(ckpt), "cpu")
    stats, events = BatchStats(), Seen()
    listing = list_pages(
        Sources([str(folder)]),
        runner,
        load_existing(out),
        redo_failed=redo_failed,
        stats=stats,
        events=events,
    )
    return listing, stats, events


@pytest.mark.parametrize("redo_failed", [False, True])
def test_a_rerun_lists_what_one_machine_would_run_and_counts_the_rest_alike(
    ckpt: Path, tmp_path: Path, redo_failed: bool
) -> None:
    folder = tmp_path / "docs"
    text_png(folder / "a.png", "alpha")
    text_pdf(folder / "two.pdf", ["page one", "page two"])
    corrupt_pdf(folder / "bad.pdf")
    out = tmp_path / "out.jsonl"
    run(JOB, Sources([str(folder)]), model=ckpt, device="cpu", output=out)
    text_png(folder / "new.png", "added later")
    text_png(folder / "z-copy.png", "added later")  # the same bytes as new.png

    listing, stats, events = _list(ckpt, folder, out, redo_failed=redo_failed)
    assert [(Path(t.source).name, t.page) for t in listing.tasks] == [("new.png", 1)]
    assert all(Path(t.path).is_absolute() for t in listing.tasks)
    errors = [Path(e.source).name for e in listing.file_errors]
    assert errors == (["bad.pdf"] if redo_failed else [])
    assert events.documents == [
        ("a.png", 1),
        ("bad.pdf", 1),
        ("new.png", 1),
        ("two.pdf", 2),
        ("z-copy.png", 1),
    ]
    assert sorted(events.skipped_pages) == sorted(
        [("a.png", 1), ("two.pdf", 1), ("two.pdf", 2), ("z-copy.png", 1)]
        + ([] if redo_failed else [("bad.pdf", None)])
    )
    # One machine on the same rerun: the same pages visited, skipped and skipped as failed.
    again = run(
        JOB, Sources([str(folder)]), model=ckpt, device="cpu", output=out, redo_failed=redo_failed
    )
    assert (stats.pages, stats.skipped, stats.skipped_failed) == (
        again.pages,
        again.skipped,
        again.skipped_failed,
    )


def test_stdin_is_refused_before_anything_is_listed(tmp_path: Path) -> None:
    runner = PageRunner(JOB, "model", None, "cpu")
    with pytest.raises(UsageError, match=r'stdin \("-"\) cannot be read with --ray'):
        list_pages(
            Sources(["-"]), runner, None, redo_failed=False, stats=BatchStats(), events=Events()
        )


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        ("s3://bucket/scans/", True),
        ("gs://bucket/a.pdf", True),
        ("file:///tmp/a.pdf", True),
        ("/tmp/a.pdf", False),
        ("scans/a.pdf", False),
        ("C://odd", False),  # a one-letter scheme: a Windows drive, not a URI
        ("not a uri://x", False),
    ],
)
def test_uris_are_told_apart_from_paths(text: str, uri: bool) -> None:
    assert is_uri(text) is uri
