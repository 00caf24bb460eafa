"""The page of ``ixcdoc serve`` in a real browser, used as a person uses it, checked against
what the CLI prints for the same file with the same checkpoint."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app as cli_app
from ixcdoc.engine.request import ChatRequest
from ixcdoc.serve import create_app
from ixcdoc.tasks import EXTRACT
from tests.serve.helpers import TIMEOUT, ProbeEngineBackend, live_server
from tests.web.conftest import BROWSER_TIMEOUT_MS

expect = pytest.importorskip("playwright.sync_api").expect

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
KEY = "sk-web"
MAX_TOKENS = 16  # the server's --max-tokens, and the CLI's --max-new-tokens to compare with
QUESTION = "Which setting has the best InfoVQA accuracy in Table 1?"
VARYING = {"created_at", "timings"}


def cli(*args: str) -> str:
    """The CLI's stdout for ``args`` (run in samples/, so files are named as the page names
    them)."""
    result = CliRunner().invoke(cli_app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def cli_model(ckpt: Path) -> list[str]:
    return ["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", str(MAX_TOKENS)]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def in_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SAMPLES)


@pytest.fixture
def server(model336: Any) -> Iterator[str]:
    """``ixcdoc serve --max-tokens 16 --batch-size 2`` on the real-geometry checkpoint."""
    with live_server(create_app(model336, batch_size=2, max_tokens=MAX_TOKENS)) as url:
        yield url


def open_file(page: Any, base: str, path: Path, pages: int) -> None:
    """Open the page, choose a file as a person does, wait for its pages and its plan."""
    page.goto(base + "/")
    page.set_input_files("#file", str(path))
    expect(page.locator("#thumbs .thumb")).to_have_count(pages)
    expect(page.locator("[data-fact=tier] span")).to_have_text(re.compile(r"^HD\d+$"))
    expect(page.locator("#page-svg image")).to_have_count(1)


def fact(page: Any, name: str) -> tuple[str, str]:
    row = page.locator(f"[data-fact='{name}'] td")
    note = row.locator("div")
    return row.locator("span").inner_text(), note.inner_text() if note.count() else ""


def check_stays_home(page: Any, base: str) -> None:
    assert page.requests.outside(base, "blob:", "data:") == []


# ---- what the model sees ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pages"), [("paper.pdf", 2), ("chart.png", 1)])
def test_each_page_shows_plans_tier_and_grid(
    page: Any, server: str, model336: Any, in_samples: None, name: str, pages: int
) -> None:
    open_file(page, server, SAMPLES / name, pages)
    for task, option in (("extract", "extract"), ("ask", "ask")):
        page.select_option("#plan-task", option)
        # What the server plans for: its --max-tokens is the generation length (the KV term).
        new = str(MAX_TOKENS)
        want = json_lines(cli("plan", name, "--task", task, "--max-new-tokens", new, "--json"))
        from ixcdoc.inputs import Sources
        from ixcdoc.planning import plan_pages

        memory = list(
            plan_pages(
                Sources([name]), task=task, cfg=model336.config, gpu=None, max_new_tokens=MAX_TOKENS
            )
        )
        assert len(want) == pages
        for row, mem in zip(want, memory, strict=True):
            page.click(f"#thumbs .thumb[data-page='{row['page']}']")
            expect(page.locator("[data-fact=page] span")).to_have_text(f"{row['page']} of {pages}")
            expect(page.locator("[data-fact=tier] span")).to_have_text(f"HD{row['tier']}")
            (h, w), (rh, rw), (ph, pw) = row["native_size"], row["resized_size"], row["padded_size"]
            rows, cols = row["grid"]
            assert fact(page, "tier") == (f"HD{row['tier']}", row["tier_reason"])
            assert fact(page, "native size")[0] == f"{w} × {h} px"
            assert fact(page, "crops")[0] == (
                f"{rows} × {cols} = {rows * cols} crops of 336 px, plus 1 global view"
            )
            assert fact(page, "HD image") == (
                f"{pw} × {ph} px",
                f"the page resized to {rw} × {rh}, padded white",
            )
            assert fact(page, "image tokens")[0] == f"{row['image_tokens']:,}"
            gib = mem["vram_gib"]
            assert fact(page, "est. peak memory")[0] == (
                f"bf16 {gib['bf16']:.2f} GiB · 4-bit {gib['4bit']:.2f} GiB"
            )
            # The drawing: the HD image's frame, the page inside its padding, one box per crop.
            svg = page.locator("#page-svg")
            assert svg.get_attribute("viewBox") == f"0 0 {pw} {ph}"
            expect(page.locator("#page-svg .crops rect")).to_have_count(rows * cols)
            image = page.locator("#page-svg image")
            assert (image.get_attribute("width"), image.get_attribute("height")) == (
                str(rw),
                str(rh),
            )
            assert int(image.get_attribute("x")) + rw <= pw
            assert page.locator("#global-svg").get_attribute("viewBox") == f"0 0 {pw} {ph}"
    page.uncheck("#show-grid")
    expect(page.locator("#page-svg .crops rect")).to_have_count(0)
    check_stays_home(page, server)


# ---- ask, transcribe, charts -----------------------------------------------------------------


def test_ask_streams_the_answer_and_marks_its_page(
    page: Any, server: str, real_geometry_ckpt: Path, in_samples: None
) -> None:
    open_file(page, server, SAMPLES / "paper.pdf", 2)
    page.click("[data-tab=ask]")
    page.fill("#question", QUESTION)
    with page.expect_response(lambda r: r.url.endswith("/runs")) as answered:
        page.click("#ask-form button[type=submit]")
    expect(page.locator("#status-text")).to_contain_text("1 ok")
    events = json_lines(answered.value.text())
    kinds = [e["event"] for e in events]
    assert "text" in kinds and kinds.index("text") < kinds.index("record")  # it streamed
    asked = cli("ask", "paper.pdf", QUESTION, "--json", *cli_model(real_geometry_ckpt))
    (want,) = json_lines(asked)
    assert want["page"] == 2
    shown = page.evaluate("t => IxMarkdown.render(t).textContent", want["text"])
    expect(page.locator("#answers .qa .a")).to_have_text(shown)
    expect(page.locator("#answers .cite")).to_contain_text(f"paper.pdf page 2/2, HD{want['tier']}")
    # The page it came from is opened and marked.
    expect(page.locator("#page-label")).to_have_text("page 2 of 2")
    expect(page.locator("#thumbs .thumb[data-page='2']")).to_have_class(re.compile("marked"))
    expect(page.locator("#mark")).to_be_visible()
    check_stays_home(page, server)


def test_ask_on_a_scan_says_which_pages_it_screened(
    page: Any, server: str, real_geometry_ckpt: Path, in_samples: None
) -> None:
    open_file(page, server, SAMPLES / "scan.pdf", 2)
    page.click("[data-tab=ask]")
    page.fill("#question", "What is the total?")
    page.click("#ask-form button[type=submit]")
    expect(page.locator("#status-text")).to_contain_text("1 ok")
    asked = cli("ask", "scan.pdf", "What is the total?", "--json", *cli_model(real_geometry_ckpt))
    (want,) = json_lines(asked)
    note = page.locator("#answers .qa .note")
    expect(note).to_contain_text("scan.pdf: screened 2 pages at HD4 for the question;")
    expect(note).to_contain_text(f"answering page {want['page']} (score")
    expect(page.locator("#page-label")).to_have_text(f"page {want['page']} of 2")
    expect(page.locator(f"#thumbs .thumb[data-page='{want['page']}']")).to_have_class(
        re.compile("marked")
    )
    # The grid drawn is the one the answer was read at (ask's tiers, not extract's).
    rows, cols = want["grid"]
    expect(page.locator("#plan-task")).to_have_value("ask")
    expect(page.locator("#page-svg .crops rect")).to_have_count(rows * cols)
    check_stays_home(page, server)


def test_a_transcription_beside_its_page_is_extracts(
    page: Any, context: Any, server: str, real_geometry_ckpt: Path, in_samples: None
) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    open_file(page, server, SAMPLES / "paper.pdf", 2)
    page.click("[data-tab=text]")
    page.click("#transcribe-page")
    expect(page.locator("#text-meta")).to_contain_text("HD30 6×5")
    want = json_lines(cli("extract", "paper.pdf", "--json", *cli_model(real_geometry_ckpt)))
    page.click("[data-view=raw]")
    expect(page.locator("#text-out pre")).to_have_text(want[0]["text"])
    page.click("[data-view=rendered]")
    shown = page.evaluate("t => IxMarkdown.render(t).textContent", want[0]["text"])
    expect(page.locator("#text-out .md")).to_have_text(shown)
    page.click("#copy")
    assert page.evaluate("navigator.clipboard.readText()") == want[0]["text"]

    page.click("#transcribe-all")
    expect(page.locator("#status-text")).to_contain_text("2 ok")
    with page.expect_download() as got:
        page.click("#download-jsonl")
    assert got.value.suggested_filename == "paper.jsonl"
    downloaded = json_lines(Path(got.value.path()).read_text())
    assert [r["page"] for r in downloaded] == [1, 2]
    # The run's status line sums what its records say of the drafts (paper.pdf has a text layer).
    tokens = sum(r["timings"]["tokens"] for r in downloaded)
    accepted = sum(r["timings"]["accepted_tokens"] for r in downloaded)
    assert all(r["timings"]["draft_tokens"] > 0 for r in downloaded)
    share = f"{100 * accepted // tokens}% of tokens from drafts ({accepted:,} of {tokens:,})"
    expect(page.locator("#status-text")).to_contain_text(share)
    for mine, theirs in zip(downloaded, want, strict=True):
        assert set(mine) == set(theirs)
        assert {k: v for k, v in mine.items() if k not in VARYING} == {
            k: v for k, v in theirs.items() if k not in VARYING
        }
    check_stays_home(page, server)


def test_the_md_download_is_extract_out_dirs_file(
    page: Any, server: str, real_geometry_ckpt: Path, in_samples: None, tmp_path: Path
) -> None:
    open_file(page, server, SAMPLES / "paper.pdf", 2)
    page.click("[data-tab=text]")
    page.click("#transcribe-all")
    expect(page.locator("#status-text")).to_contain_text("2 ok")
    with page.expect_download() as got:
        page.click("#download-md")
    out = tmp_path / "md"
    cli("extract", "paper.pdf", "--out-dir", str(out), *cli_model(real_geometry_ckpt))
    assert got.value.suggested_filename == "paper.md"
    assert Path(got.value.path()).read_text() == (out / "paper.md").read_text()


def test_a_chart_table_is_rendered_as_chart_table_gives_it(
    page: Any, server: str, real_geometry_ckpt: Path, in_samples: None
) -> None:
    open_file(page, server, SAMPLES / "chart.png", 1)
    page.click("[data-tab=chart]")
    page.click("#chart-table")
    expect(page.locator("#status-text")).to_contain_text("1 ok")
    (want,) = json_lines(
        cli("chart", "chart.png", "--table", "--json", *cli_model(real_geometry_ckpt))
    )
    shown = page.evaluate("t => IxMarkdown.render(t).textContent", want["text"])
    expect(page.locator("#chart-out .chart-result")).to_have_text(shown)
    page.click("#chart-summary")
    expect(page.locator("#chart-out h3")).to_have_text(["Summary", "Table"])


def test_markdown_tables_render_and_nothing_in_a_text_runs(page: Any, server: str) -> None:
    page.goto(server + "/")
    html = page.evaluate(
        "t => IxMarkdown.render(t).innerHTML",
        "# Sales\n\n| year | total |\n|---|---:|\n| 2024 | **12** |\n\n"
        '<img src=x onerror="window.hacked=1"> ![logo](http://example.com/x.png)\n'
        "<script>window.hacked=2</script>",
    )
    assert "<table>" in html and "<th>year</th>" in html and "<strong>12</strong>" in html
    assert "<img" not in html and "<script" not in html and "example.com/x.png" not in html
    assert page.evaluate("window.hacked") is None
    check_stays_home(page, server)


# ---- honest state: keys, limits, a busy server -------------------------------------------------


def test_a_wrong_key_is_asked_again_and_the_key_stays_in_the_tab(page: Any, model336: Any) -> None:
    with live_server(create_app(model336, api_key=KEY, batch_size=1)) as base:
        page.goto(base + "/")
        page.set_input_files("#file", str(SAMPLES / "chart.png"))
        expect(page.locator("#key-dialog")).to_be_visible()
        expect(page.locator("#key-why")).to_have_text(
            "missing API key: send 'Authorization: Bearer KEY'"
        )
        page.fill("#key-input", "not-the-key")
        page.click("#key-dialog button[value=ok]")
        expect(page.locator("#key-why")).to_have_text("incorrect API key")
        page.fill("#key-input", KEY)
        page.click("#key-dialog button[value=ok]")
        expect(page.locator("#thumbs .thumb")).to_have_count(1)
        expect(page.locator("#thumbs .thumb img")).to_have_attribute("src", re.compile("^blob:"))
        assert page.evaluate("sessionStorage.getItem('ixcdoc-api-key')") == KEY
        assert page.evaluate("localStorage.length") == 0
        assert not [u for u in page.requests.urls if KEY in u or "not-the-key" in u]
        check_stays_home(page, base)


def test_an_encrypted_pdf_asks_for_its_password(page: Any, server: str, tmp_path: Path) -> None:
    from tests.serve.test_page_api import locked_pdf

    page.goto(server + "/")
    page.set_input_files("#file", str(locked_pdf(tmp_path, "s3cret")))
    expect(page.locator("#password-why")).to_have_text(
        "locked.pdf is encrypted: it needs its password."
    )
    page.fill("#password-input", "guess")
    page.click("#password-dialog button[value=ok]")
    expect(page.locator("#password-why")).to_have_text("Wrong password for locked.pdf.")
    page.fill("#password-input", "s3cret")
    page.click("#password-dialog button[value=ok]")
    expect(page.locator("#thumbs .thumb")).to_have_count(2)
    expect(page.locator("[data-fact=tier] span")).to_have_text("HD30")
    assert not [u for u in page.requests.urls if "s3cret" in u or "guess" in u]
    check_stays_home(page, server)


def test_an_oversized_file_is_one_line_413(page: Any, model336: Any) -> None:
    with live_server(create_app(model336, max_body_mb=8 / 1024, batch_size=1)) as base:
        page.goto(base + "/")
        page.set_input_files("#file", str(SAMPLES / "paper.pdf"))  # 13 kB, over 8 KiB
        expect(page.locator("#status-text")).to_have_text(
            "error: 413: request body over the 0.0078125 MB limit (--max-body-mb)"
        )
        expect(page.locator("#status")).to_have_class("status error")
        expect(page.locator("#main")).to_have_class("empty")


def test_a_busy_server_says_429_and_nothing_hangs(page: Any, model336: Any) -> None:
    backend = ProbeEngineBackend(model336, n_slots=1, max_len=8192, max_queue=1, hold=True)
    done = threading.Semaphore(0)
    with live_server(create_app(model336, backend=backend)) as base:
        open_file(page, base, SAMPLES / "chart.png", 1)
        image = Image.new("RGB", (60, 40), "white")
        for _ in range(2):  # one held on the engine, one waiting: the queue is full
            job = ChatRequest([image], "hi", hd=1, meta_instruction="", max_new_tokens=2)
            backend.submit(job, lambda _: True, lambda *_: done.release())
        assert backend.entered.wait(TIMEOUT)
        page.click("[data-tab=chart]")
        page.click("#chart-summary")
        expect(page.locator("#status-text")).to_contain_text(
            "error: server busy (429): the server is busy: 1 requests are waiting (--max-queue)"
        )
        expect(page.locator("#cancel")).to_be_hidden()
        backend.release.set()
        assert done.acquire(timeout=TIMEOUT) and done.acquire(timeout=TIMEOUT)
        page.click("#chart-summary")  # and once it is free, the same click works
        expect(page.locator("#status-text")).to_contain_text("1 ok")


def test_cancel_stops_the_run_on_the_server(page: Any, model336: Any) -> None:
    backend = ProbeEngineBackend(model336, n_slots=1, max_len=8192, hold=True)
    with live_server(create_app(model336, backend=backend)) as base:
        open_file(page, base, SAMPLES / "chart.png", 1)
        page.click("[data-tab=text]")
        page.click("#transcribe-page")
        assert backend.entered.wait(TIMEOUT)  # the page is on the engine, held before prefill
        expect(page.locator("#status-text")).to_contain_text("in flight: page 1 (HD")
        page.click("#cancel")
        expect(page.locator("#status-text")).to_have_text("cancelled: 0 of 1 pages done")
        backend.release.set()
        with backend._lock:  # the job stops at its first token: nothing is left on the engine
            assert backend._lock.wait_for(lambda: backend.depth == 0, TIMEOUT)
        assert backend.answers[EXTRACT.prompt].stop_reason == "callback"


def test_a_page_that_fails_says_why_in_one_line(page: Any, model336: Any) -> None:
    backend = ProbeEngineBackend(model336, n_slots=1, max_len=8192, fail="the GPU caught fire")
    with live_server(create_app(model336, backend=backend)) as base:
        open_file(page, base, SAMPLES / "chart.png", 1)
        page.click("[data-tab=chart]")
        page.click("#chart-table")
        expect(page.locator("#status-text")).to_have_text(
            re.compile(
                r"^chart\.png: 0 ok, 1 failed · 1 page in .* · error: chart\.png page 1: "
                r"RuntimeError: the GPU caught fire$"
            )
        )
        expect(page.locator("#chart-out .error")).to_have_text(
            "failed (error): chart.png page 1: RuntimeError: the GPU caught fire"
        )


# ---- other ways in, other windows --------------------------------------------------------------


def test_a_pasted_screenshot_and_a_dropped_file_open(page: Any, server: str) -> None:
    page.goto(server + "/")
    png = base64.b64encode((SAMPLES / "screenshot.png").read_bytes()).decode()
    page.evaluate(
        """png => {
          const bytes = Uint8Array.from(atob(png), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], "image.png", {type: "image/png"}));
          document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt}));
        }""",
        png,
    )
    expect(page.locator("#thumbs .thumb")).to_have_count(1)
    expect(page.locator("#status-text")).to_contain_text("pasted-")
    pdf = base64.b64encode((SAMPLES / "paper.pdf").read_bytes()).decode()
    page.evaluate(
        """pdf => {
          const bytes = Uint8Array.from(atob(pdf), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], "dropped.pdf", {type: "application/pdf"}));
          window.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        pdf,
    )
    expect(page.locator("#thumbs .thumb")).to_have_count(2)
    expect(page.locator("#docs option")).to_have_count(2)
    expect(page.locator("#docs")).to_be_visible()
    check_stays_home(page, server)


def test_a_long_document_renders_only_the_thumbnails_in_view(
    page: Any, server: str, tmp_path: Path
) -> None:
    import pymupdf

    from tests.inputs.builders import add_text_page

    pdf = tmp_path / "long.pdf"
    with pymupdf.open() as doc:
        for n in range(1, 41):
            add_text_page(doc, [(10, f"Page {n} of a long report.")])
        doc.save(pdf)
    open_file(page, server, pdf, 40)
    thumbs = page.locator("#thumbs .thumb img")
    expect(thumbs.nth(0)).to_have_attribute("src", re.compile("^blob:"))

    def asked() -> int:
        return len([u for u in page.requests.urls if "max=240" in u])

    page.wait_for_load_state("networkidle")  # nothing more is coming
    assert asked() < 15  # 40 pages, a few in view
    page.locator("#thumbs .thumb").nth(39).scroll_into_view_if_needed()
    expect(thumbs.nth(39)).to_have_attribute("src", re.compile("^blob:"))
    check_stays_home(page, server)


def test_a_phone_sized_window_shows_everything_in_one_column(chromium: Any, server: str) -> None:
    ctx = chromium.new_context(viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        page = ctx.new_page()
        page.requests = type("R", (), {"urls": []})()
        page.on("request", lambda r: page.requests.urls.append(r.url))
        page.goto(server + "/")
        page.set_input_files("#file", str(SAMPLES / "paper.pdf"))
        expect(page.locator("#page-svg image")).to_have_count(1)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
        for sel in ("#thumbs", "#page-svg", "#global-svg", ".tabs", "#facts"):
            box = page.locator(sel).bounding_box()
            assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 390, sel
        svg = page.locator("#page-svg").bounding_box()
        assert svg is not None and svg["width"] > 300 and svg["height"] > 300
        page.click("[data-tab=text]")
        expect(page.locator("#transcribe-page")).to_be_visible()
        assert not [u for u in page.requests.urls if not u.startswith((server, "blob:", "data:"))]
    finally:
        ctx.close()
