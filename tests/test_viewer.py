"""ixcdoc.viewer: which records an ``ixcdoc view`` shows, where its images come from, and an
HTML file that holds the records exactly and runs nothing from them."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from ixcdoc.errors import UsageError
from ixcdoc.records import ErrorInfo, JsonlWriter, PageRecord, Timings
from ixcdoc.viewer import VIEW_SIDE, SourceFiles, data_urls, read_run, view_html


def png(path: Path, size: tuple[int, int], colour: str = "white") -> bytes:
    Image.new("RGB", size, colour).save(path, "PNG")
    return path.read_bytes()


def record(source: str, data: bytes, page: int = 1, **over: Any) -> PageRecord:
    """An ok extract record of ``source`` (whose bytes are ``data``) for ``page``."""
    fields: dict[str, Any] = dict(
        source=source,
        content_sha256=hashlib.sha256(data).hexdigest(),
        page=page,
        page_count=2,
        task="extract",
        prompt="Transcribe.",
        text=f"text of page {page}",
        status="ok",
        tier=16,
        grid=(4, 4),
        image_tokens=2509,
        native_size=(80, 60),
        model="tiny",
        precision="fp32",
        device="cpu",
        timings=Timings(tokens=3),
        created_at="2026-12-07T00:00:00Z",
    )
    fields.update(over)
    return PageRecord(**fields)


def write(path: Path, *records: PageRecord) -> Path:
    with JsonlWriter(path) as w:
        for r in records:
            w.write(r)
    return path


class _Scripts(html.parser.HTMLParser):
    """The HTML's elements that fetch or run: script elements, src/href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.refs: list[str] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))
        self.refs += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


def test_the_latest_record_of_each_page_is_shown(tmp_path: Path) -> None:
    data = png(tmp_path / "a.png", (60, 80))
    first = record("a.png", data, status="error", text="", error=ErrorInfo("oom", "a.png: oom"))
    again = record("a.png", data)  # --redo-failed: the same page, now done
    run = read_run(write(tmp_path / "run.jsonl", first, again, record("a.png", data, page=2)))
    assert [(r.page, r.status) for r in run.records] == [(1, "ok"), (2, "ok")]


def test_an_out_dir_and_a_shard_folder_are_read_too(tmp_path: Path) -> None:
    data = png(tmp_path / "a.png", (60, 80))
    out = tmp_path / "md"
    (out / ".ixcdoc").mkdir(parents=True)
    write(out / ".ixcdoc" / "records.jsonl", record("a.png", data))
    assert read_run(out).path == out / ".ixcdoc" / "records.jsonl"
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards / "w0.jsonl", record("a.png", data, page=1))
    write(shards / "w1.jsonl", record("a.png", data, page=2))
    assert sorted(r.page for r in read_run(shards).records) == [1, 2]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"empty: no records here"):
        read_run(empty)


def test_sources_are_found_beside_the_records_with_the_same_bytes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = png(run_dir / "a.png", (60, 80))
    files = SourceFiles(run_dir / "run.jsonl")
    assert files.locate("a.png", hashlib.sha256(data).hexdigest()) == run_dir / "a.png"
    assert files.locate("a.png", "0" * 64) == f"{run_dir / 'a.png'}: changed since the run " + (
        "(other bytes): no image"
    )
    assert files.locate("gone.png", "0" * 64) == (
        "gone.png: not found (the image is re-rendered from the source)"
    )
    assert files.locate("-", None) == "read from stdin: no file to show"


def test_the_html_holds_the_records_and_images_and_runs_nothing_of_them(tmp_path: Path) -> None:
    data = png(tmp_path / "{{DATA}}.png", (3000, 2000), "navy")
    hostile = "</script><script>window.x=1</script> <!-- & \u2028 ok"
    recs = [record("{{DATA}}.png", data, text=hostile, page_count=1)]
    run = read_run(write(tmp_path / "run.jsonl", *recs))
    page = view_html(data_urls(run, SourceFiles(run.path)))
    parsed = _Scripts()
    parsed.feed(page)
    (blob,) = [text for attrs, text in parsed.scripts if attrs.get("type") == "application/json"]
    shown = json.loads(blob)
    (doc,) = shown["documents"]
    assert doc["source"] == "{{DATA}}.png"
    assert doc["pages"][0]["records"] == [recs[0].to_dict()]
    # two scripts: the data and the page's own; the text made no third one
    assert len(parsed.scripts) == 2
    assert all(r.startswith("data:") for r in parsed.refs)
    image = doc["pages"][0]["image"]
    assert image.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1])))
    assert im.format == "JPEG" and max(im.size) == VIEW_SIDE
    assert "default-src 'none'; img-src data:;" in page


def test_the_viewer_needs_neither_the_server_nor_torch(tmp_path: Path) -> None:
    """``ixcdoc view`` works without the serve extra: it reads its page from ixcdoc/serve/web/
    as package data, never importing FastAPI (nor torch)."""
    data = png(tmp_path / "a.png", (60, 80))
    write(tmp_path / "run.jsonl", record("a.png", data))
    probe = (
        "import sys\n"
        "from ixcdoc.viewer import SourceFiles, data_urls, read_run, view_html\n"
        f"run = read_run({str(tmp_path / 'run.jsonl')!r})\n"
        "page = view_html(data_urls(run, SourceFiles(run.path)))\n"
        "assert page.count('data:image/jpeg') == 1\n"
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"
