"""``ixcdoc view`` in a real browser: the HTML file on its own (nothing fetched), and the page
served on 127.0.0.1, over the records of a real ``extract`` run."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ixcdoc.cli import app as cli_app
from ixcdoc.records import PageRecord, latest_records
from ixcdoc.viewer import SourceFiles, ViewServer, read_run

expect = pytest.importorskip("playwright.sync_api").expect

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, real_geometry_ckpt: Path) -> Path:
    """``extract paper.pdf chart.png broken.pdf -o run.jsonl``, run in a folder of its own."""
    d = tmp_path_factory.mktemp("view-run")
    for name in ("paper.pdf", "chart.png"):
        shutil.copy(SAMPLES / name, d / name)
    (d / "broken.pdf").write_text("this is no PDF")
    args = ["extract", "paper.pdf", "chart.png", "broken.pdf", "-o", "run.jsonl"]
    args += ["--model", str(real_geometry_ckpt), "--device", "cpu", "--max-new-tokens", "12"]
    here = os.getcwd()
    os.chdir(d)
    try:
        result = CliRunner().invoke(cli_app, args, catch_exceptions=False)
    finally:
        os.chdir(here)
    assert result.exit_code == 3, result.stderr  # broken.pdf failed, the rest is done
    return d


@pytest.fixture(scope="module")
def run_records(run_dir: Path) -> list[PageRecord]:
    return latest_records(run_dir / "run.jsonl")


def page_records(records: list[PageRecord]) -> list[PageRecord]:
    """The page records in the viewer's order: documents as first seen, pages in order (the
    batched engine writes records as pages finish, which need not be input order)."""
    docs = list(dict.fromkeys((r.source, r.content_sha256) for r in records))
    pages = [r for r in records if r.page is not None]
    return sorted(pages, key=lambda r: (docs.index((r.source, r.content_sha256)), r.page))


def view_html_file(run_dir: Path, out: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["view", str(run_dir / "run.jsonl"), "--html", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"3 pages (3 with their image) of 3 documents in {out}\n"


def walk_pages(page: Any, records: list[PageRecord]) -> None:
    """Every page record is listed; each shows its image and its text."""
    buttons = page.locator("#docs .pages button")
    expect(buttons).to_have_count(len(page_records(records)))
    page.click("[data-view=raw]")
    for i, rec in enumerate(page_records(records)):
        buttons.nth(i).click()
        where = f"{rec.source} page {rec.page}/{rec.page_count}"
        expect(page.locator("#where")).to_have_text(where)
        image = page.locator("#page img")
        expect(image).to_have_count(1)
        decoded = "img => img.complete && img.naturalWidth > 0"
        page.wait_for_function(decoded, arg=image.element_handle())
        expect(page.locator("#records pre.raw")).to_have_text(rec.text)
        expect(page.locator("#records .record-facts").first).to_contain_text(
            f"HD{rec.tier} {rec.grid[0]}×{rec.grid[1]}"
        )
        # speculative decoding: the share of the page's tokens accepted from drafts
        t = rec.timings
        facts = page.locator("#records .record-facts").first
        if t.draft_tokens or t.accepted_tokens:
            accepted, tokens = t.accepted_tokens or 0, t.tokens or 0
            share = f"{100 * accepted // tokens}% of tokens from drafts"
            expect(facts).to_contain_text(f"{share} ({accepted:,} of {tokens:,})")
        else:
            expect(facts).not_to_contain_text("drafts")


def test_the_html_file_shows_every_page_and_fetches_nothing(
    page: Any, run_dir: Path, run_records: list[PageRecord], tmp_path: Path
) -> None:
    out = tmp_path / "run.html"
    view_html_file(run_dir, out)
    me = out.as_uri()
    blocked: list[str] = []

    def only_the_file(route: Any) -> None:
        url = route.request.url
        if url == me or url.startswith(("data:", "about:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(me)
    assert any(r.timings.draft_tokens for r in run_records)  # paper.pdf drafts from its text
    walk_pages(page, run_records)
    expect(page.locator("#docs .file-errors")).to_have_text(
        "failed (corrupt): broken.pdf: named .pdf but the content is not PDF (looks like text)"
    )
    expect(page.locator("#status-text")).to_have_text("3 documents · 3 pages · 1 file not read")
    # Search: the pages whose text holds the words are marked, the words highlighted.
    word = page_records(run_records)[-1].text[:6]
    hits = [r for r in page_records(run_records) if word.lower() in r.text.lower()]
    page.fill("#search", word)
    expect(page.locator("#docs .pages button.hit")).to_have_count(len(hits))
    page.click("[data-view=rendered]")
    assert page.locator("#records mark").count() >= 1
    assert blocked == []
    assert page.requests.outside(me, "data:", "about:") == []


def test_the_served_viewer_renders_pages_from_their_files(
    page: Any, run_dir: Path, run_records: list[PageRecord]
) -> None:
    run = read_run(run_dir / "run.jsonl")
    server = ViewServer(run, SourceFiles(run.path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(server.url)
        walk_pages(page, run_records)
        src = page.locator("#page img").get_attribute("src")
        assert src is not None and src.startswith("/img/")
        assert page.requests.outside(server.url, "data:") == []
    finally:
        server.shutdown()
        thread.join(30)
    assert not thread.is_alive()


def test_a_moved_source_says_so_instead_of_an_image(
    page: Any, run_dir: Path, run_records: list[PageRecord], tmp_path: Path
) -> None:
    # the viewer opens on its first page: which document that is depends on which page the
    # engine finished first (speculation's step choices are timed), so read it from the records
    first = page_records(run_records)[0].source
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(run_dir / "run.jsonl", moved / "run.jsonl")  # the documents stay behind
    out = tmp_path / "moved.html"
    result = CliRunner().invoke(
        cli_app, ["view", str(moved / "run.jsonl"), "--html", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0 and "(0 with their image)" in result.stderr
    page.goto(out.as_uri())
    expect(page.locator("#page .no-image")).to_have_text(
        f"{first}: not found (the image is re-rendered from the source)"
    )


@pytest.fixture
def phone(chromium: Any) -> Iterator[Any]:
    ctx = chromium.new_context(viewport={"width": 390, "height": 844})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def test_the_viewer_fits_a_phone(phone: Any, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    view_html_file(run_dir, out)
    phone.goto(out.as_uri())
    expect(phone.locator("#page img")).to_have_count(1)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    box = phone.locator("#page img").bounding_box()
    assert box is not None and box["width"] > 300
