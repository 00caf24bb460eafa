"""What a request may cost the server: images checked from their headers before any decode,
decoded pixels bounded across requests (the server's peak memory measured), the body bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ixcdoc.serve import create_app
from ixcdoc.serve.budget import PixelBudget
from tests.serve.helpers import TIMEOUT, chat_body, cli_server, data_url, live_server, page_png

CHAT = "/v1/chat/completions"
MP = 10_000_000  # the servers below run with --max-pixels 10 MP: one page is 40 MB in PIL (RGBX)
PAGE_MB = MP * 4 / 2**20


def _huge_pdf() -> bytes:
    """A few hundred bytes: one blank page of 14400 pt square, PDF's largest. At 150 dpi it
    would be 30000 px square; --max-pixels lowers its DPI to fit, so it renders to one full
    page of pixels."""
    import pymupdf

    doc = pymupdf.open()
    doc.new_page(width=14400, height=14400)
    return doc.tobytes(garbage=4, deflate=True)


def _pdf_url() -> str:
    return "data:application/pdf;base64," + base64.b64encode(_huge_pdf()).decode()


def test_a_hostile_request_is_refused_from_its_headers_before_a_pixel_is_decoded(
    tiny_paths: dict[str, Path],
) -> None:
    """Six tiny PDFs whose pages together take more tokens than the model's positions: each
    page's size comes from its header (PyMuPDF, no render), the tokens from the plan, and the
    request is refused before any page is decoded, so the server's peak memory does not move
    (it took 2.5 GB for 11 s at the default --max-pixels before)."""
    pdf = _huge_pdf()
    assert len(pdf) < 1000
    url = _pdf_url()
    # HD1000 on the tiny model: ~4000 tokens a page, so six pass its 16384 positions.
    body = chat_body("Read them.", *[url] * 6, ixcdoc={"hd": 1000})
    assert len(json.dumps(body)) < 5000
    with (
        cli_server(tiny_paths["normal"], "--max-pixels", str(MP), "--batch-size", "1") as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        warm = http.post(CHAT, json=chat_body("Warm up.", data_url(page_png())))
        assert warm.status_code == 200, warm.text  # every lazy allocation is made now
        before = server.peak_mb()
        r = http.post(CHAT, json=body)
        grew = server.peak_mb() - before
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_image_tokens"
    assert "6 image(s) at HD1000" in err["message"]
    assert grew < PAGE_MB, f"the peak grew {grew:.0f} MiB: a page was decoded"  # 4 MiB measured


def test_decoded_pages_in_flight_are_bounded_across_requests(
    tiny_paths: dict[str, Path],
) -> None:
    """Eight clients each send a page of --max-pixels at once, to a model that never stops, so
    all eight are in flight together. Each page is decoded within the pixel budget (two pages
    at once) and shrunk to its tier right away: the peak stays near two pages' decode, where
    holding every native page until its answer took eight pages and more."""
    n = 8
    url = _pdf_url()
    with cli_server(
        tiny_paths["loop"], "--max-pixels", str(MP), "--batch-size", str(n), "--max-tokens", "4096"
    ) as server:
        clients = [httpx.Client(base_url=server.url, timeout=TIMEOUT) for _ in range(n + 1)]
        try:
            warm = clients[n].post(CHAT, json=chat_body("Warm up.", data_url(page_png())))
            assert warm.status_code == 200, warm.text
            before = server.peak_mb()
            started = threading.Barrier(n + 1, timeout=TIMEOUT)
            failures: list[str] = []

            def stream(i: int) -> None:
                body = chat_body(f"Page {i}.", url, stream=True, max_tokens=4000)
                with clients[i].stream("POST", CHAT, json=body) as r:
                    if r.status_code != 200:
                        failures.append(r.read().decode())
                    else:  # its page is decoded and it is on the model
                        next(e for e in r.iter_lines() if '"content"' in e)
                    started.wait()

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            started.wait()  # all eight are in flight together
            grew = server.peak_mb() - before
        finally:
            for c in clients:
                c.close()  # the streams end: their jobs are cancelled
        for t in threads:
            t.join(TIMEOUT)
    assert failures == []
    # Two pages decoding at once: each takes its PIL image and, for a PDF, MuPDF's pixmap
    # (3/4 of it), so 3.5 pages (3.7 measured); eight native pages held: 9.4 measured.
    assert grew < 6 * PAGE_MB, f"the peak grew {grew:.0f} MiB, {grew / PAGE_MB:.1f} pages"


@pytest.fixture(scope="module")
def small_limits(twin: Any) -> Iterator[str]:
    app = create_app(twin, batch_size=2, max_images=3)
    with live_server(app) as url:
        yield url


def test_more_images_than_the_limit_is_400_before_any_is_read(small_limits: str) -> None:
    png = data_url(page_png())
    broken = "data:image/png;base64,@@@"  # would be a 400 of its own, if it were read
    with httpx.Client(base_url=small_limits, timeout=TIMEOUT) as http:
        r = http.post(CHAT, json=chat_body("Four?", png, png, png, broken))
        ok = http.post(CHAT, json=chat_body("Three.", png, png, png))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_images" and err["param"] == "messages"
    assert "4 images in one request, over this server's limit of 3" in err["message"]
    assert ok.status_code == 200, ok.text


def test_more_messages_than_the_positions_hold_is_400_before_validation(
    small_limits: str, twin: Any
) -> None:
    """An 11 MB body of 220,000 short messages took 1.9 s of validation holding the GIL
    (/health waited for it); past one message per position it is refused after the parse."""
    n = twin.config.max_length + 1
    msgs = [{"role": "user", "content": "x"}] * n
    with httpx.Client(base_url=small_limits, timeout=TIMEOUT) as http:
        r = http.post(CHAT, json={"messages": msgs, "max_tokens": 2})
        parts = [{"type": "text", "text": "x"}] * n  # parts of one message count as well
        r2 = http.post(CHAT, json={"messages": [{"role": "user", "content": parts}]})
    for res in (r, r2):
        assert res.status_code == 400, res.text
        assert res.json()["error"]["param"] == "messages"
    assert f"{n:,} messages and content parts" in r.json()["error"]["message"]
    assert f"{n + 1:,} messages and content parts" in r2.json()["error"]["message"]


# ---- the pixel budget on its own --------------------------------------------------------------


async def _settle() -> None:
    """Let every task that can run, run (the loop is deterministic)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_the_budget_holds_at_most_its_capacity_first_come_first_served() -> None:
    async def run() -> list[str]:
        budget = PixelBudget(10)
        order: list[str] = []
        gates = {name: asyncio.Event() for name in ("a", "b", "c", "d")}

        async def page(name: str, pixels: int) -> None:
            async with budget.hold(pixels):
                order.append(f"+{name}")
                assert budget.used <= budget.capacity
                await gates[name].wait()
            order.append(f"-{name}")

        tasks = []
        for name, pixels in (("a", 6), ("b", 8), ("c", 1), ("d", 50)):
            tasks.append(asyncio.ensure_future(page(name, pixels)))
            await _settle()  # each reaches the budget in this order
        # a holds 6; b (8) does not fit; c (1) would, but b is ahead of it and is not overtaken
        assert order == ["+a"] and budget.waiting == 3
        gates["a"].set()
        await _settle()
        # a left: b, then c behind it, fit together (9); d (50, capped to the capacity) waits
        assert order == ["+a", "-a", "+b", "+c"] and budget.used == 9 and budget.waiting == 1
        gates["b"].set()
        await _settle()
        assert "+d" not in order  # 1 still held by c
        gates["c"].set()
        gates["d"].set()
        await asyncio.gather(*tasks)
        assert budget.used == 0 and budget.waiting == 0
        return order

    order = asyncio.run(run())
    assert order[-2:] == ["+d", "-d"]  # alone


def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_others_in() -> None:
    async def run() -> None:
        budget = PixelBudget(10)
        release = asyncio.Event()

        async def holder() -> None:
            async with budget.hold(10):
                await release.wait()

        first = asyncio.ensure_future(holder())
        await _settle()
        blocked = asyncio.ensure_future(budget.hold(5).__aenter__())
        behind = asyncio.ensure_future(holder())
        await _settle()
        assert budget.waiting == 2
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert budget.waiting == 1 and budget.used == 10
        release.set()
        await asyncio.gather(first, behind)
        assert budget.used == 0 and budget.waiting == 0

    asyncio.run(run())
