"""The Guard middleware at its edges: the auth scheme's case, a body exactly at the limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ixcdoc.serve import create_app
from tests.serve.helpers import TIMEOUT, chat_body, live_server

KEY = "sk-edges"
CHAT = "/v1/chat/completions"
LIMIT_MB = 0.25
LIMIT = int(LIMIT_MB * 2**20)  # bytes


@pytest.fixture(scope="module")
def http(tiny: Any) -> Iterator[httpx.Client]:
    app = create_app(tiny, api_key=KEY, max_body_mb=LIMIT_MB, batch_size=2)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(http: httpx.Client, scheme: str) -> None:
    # RFC 7235: the auth scheme is a case-insensitive token; the key itself is not
    r = http.get("/v1/models", headers={"Authorization": f"{scheme} {KEY}"})
    assert r.status_code == 200, r.text
    wrong = http.get("/v1/models", headers={"Authorization": f"{scheme} {KEY.upper()}"})
    assert wrong.status_code == 401


def _body(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    raw = json.dumps(chat_body("hi")).encode()
    assert len(raw) < size
    return raw + b" " * (size - len(raw))


def _chunks(body: bytes) -> Iterator[bytes]:
    """The body in pieces, sent without a Content-Length (chunked transfer encoding)."""
    for i in range(0, len(body), 50_000):
        yield body[i : i + 50_000]


def test_a_body_exactly_at_the_limit_is_accepted(http: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    at = http.post(CHAT, content=_body(LIMIT), headers=headers)
    assert at.request.headers["content-length"] == str(LIMIT)
    assert at.status_code == 200, at.text
    over = http.post(CHAT, content=_body(LIMIT + 1), headers=headers)
    assert over.status_code == 413
    # the same, counted as the chunks come in
    at = http.post(CHAT, content=_chunks(_body(LIMIT)), headers=headers)
    assert "content-length" not in at.request.headers
    assert at.status_code == 200, at.text
    over = http.post(CHAT, content=_chunks(_body(LIMIT + 1)), headers=headers)
    assert over.status_code == 413
