"""Fixtures for the browser tests: the system's Chromium through Playwright, a tiny checkpoint
with the real model's geometry (336-px tiles, 14-px patches), and servers on 127.0.0.1.

The tests skip, saying why, only where Chromium or Playwright cannot be had (CI installs both:
.ci/run). Playwright drives the browser over a pipe; the browser may reach 127.0.0.1 only,
and each test fails on any request that goes elsewhere.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import _offline  # noqa: F401 - loopback allowed, nothing else

BROWSER_TIMEOUT_MS = 60_000  # every wait on the page is bounded by this


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium: the system's own (apt's ``chromium``), never a downloaded one."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): the browser tests need it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    sync_api.expect.set_options(timeout=BROWSER_TIMEOUT_MS)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def real_geometry_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint whose tiles and patches are the real model's: its tiers, grids
    and token counts are those ``ixcdoc plan`` prints. The folder name is the model's name."""
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("web-ckpt") / "tiny336", tile=336)


@pytest.fixture(scope="session")
def model336(real_geometry_ckpt: Path) -> Any:
    """That checkpoint loaded on the CPU through ``ixcdoc.load``."""
    import ixcdoc

    return ixcdoc.load(real_geometry_ckpt, device="cpu")


class Requests:
    """Every URL a page asked for; ``outside(allowed)`` lists those not starting with one of
    ``allowed``."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def outside(self, *allowed: str) -> list[str]:
        return [u for u in self.urls if not u.startswith(allowed)]


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) at 1280x800."""
    ctx = chromium.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page that keeps every request it made (``page.requests``) and fails the test on a
    JavaScript error."""
    pg = context.new_page()
    pg.requests = Requests()
    errors: list[str] = []
    pg.on("request", lambda r: pg.requests.urls.append(r.url))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    assert not errors, f"JavaScript errors: {errors}"
