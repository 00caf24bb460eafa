"""serve/guard.py's rules, directly: the API key a server may be given, and the Guard
middleware's order (key, then the body's size, then its deadline) on scripted ASGI messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from ixcdoc.errors import UsageError
from ixcdoc.serve.guard import Guard, check_api_key

KEY = "sk-guard"


class Inner:
    """The app behind the guard: records the body it was given and its later receive()."""

    def __init__(self) -> None:
        self.calls = 0
        self.body: bytes | None = None
        self.after: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["type"] == "http":
            self.body = (await receive())["body"]
            self.after = await receive()  # goes to the server: its disconnect is still seen


def _run(
    guard: Guard,
    messages: Sequence[dict[str, Any]],
    *,
    path: str = "/v1/chat/completions",
    headers: Sequence[tuple[bytes, bytes]] = (),
    block: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Send ``messages`` (then a disconnect, or nothing ever when ``block``) through
    ``guard``: (what it sent, how many messages it read)."""
    sent: list[dict[str, Any]] = []
    queue = [*messages]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        if queue:
            return queue.pop(0)
        if block:
            await asyncio.Event().wait()  # a client that stops sending
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": list(headers)}
    asyncio.run(guard(scope, receive, send))
    return sent, read


def _status(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    start, body = sent
    return start["status"], json.loads(body["body"]), dict(start["headers"])


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def _bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key}".encode())


@pytest.mark.parametrize("key", ["", "   ", "sk-\u00e9t\u00e9", "sk-\x07", " sk-x", "sk-x\t"])
def test_a_key_no_client_can_send_is_refused(key: str) -> None:
    with pytest.raises(UsageError, match="--api-key"):
        check_api_key(key)


def test_a_sendable_key_or_none_is_kept() -> None:
    assert check_api_key(None) is None
    assert check_api_key("sk-local 1") == "sk-local 1"


def test_without_a_key_on_v1_nothing_reaches_the_app() -> None:
    inner = Inner()
    sent, read = _run(Guard(inner, api_key=KEY, max_body=100), [_body(b"{}")])
    status, body, headers = _status(sent)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert "missing API key" in body["error"]["message"]
    assert headers[b"www-authenticate"] == b"Bearer"
    assert (inner.calls, read) == (0, 0)  # refused before the body is read


@pytest.mark.parametrize("auth", [b"Basic sk-guard", b"Bearer ", b"sk-guard"])
def test_a_key_in_another_scheme_or_none_is_missing(auth: bytes) -> None:
    sent, _ = _run(
        Guard(Inner(), api_key=KEY, max_body=100), [], headers=[(b"authorization", auth)]
    )
    status, body, _ = _status(sent)
    assert status == 401 and "missing API key" in body["error"]["message"]


def test_a_wrong_key_is_incorrect() -> None:
    sent, _ = _run(Guard(Inner(), api_key=KEY, max_body=100), [], headers=[_bearer("sk-other")])
    status, body, _ = _status(sent)
    assert (status, body["error"]["message"]) == (401, "incorrect API key")


def test_the_right_key_gets_the_body_replayed_whole_then_the_server() -> None:
    inner = Inner()
    messages = [_body(b'{"a":', more=True), _body(b" 1}")]
    sent, _ = _run(Guard(inner, api_key=KEY, max_body=100), messages, headers=[_bearer(KEY)])
    assert sent == []
    assert inner.body == b'{"a": 1}'
    assert inner.after == {"type": "http.disconnect"}


def test_the_web_page_outside_v1_needs_no_key() -> None:
    inner = Inner()
    _run(Guard(inner, api_key=KEY, max_body=100), [_body(b"")], path="/")
    assert inner.calls == 1


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    inner = Inner()
    headers = [_bearer(KEY), (b"content-length", b"101")]
    sent, read = _run(Guard(inner, api_key=KEY, max_body=100), [], headers=headers)
    status, body, _ = _status(sent)
    assert (status, body["error"]["code"]) == (413, "too_large")
    assert (inner.calls, read) == (0, 0)


def test_a_body_past_the_limit_is_refused_at_the_chunk_that_passes_it() -> None:
    inner = Inner()
    chunks = [_body(b"x" * 60, more=True), _body(b"x" * 41, more=True), _body(b"never read")]
    sent, read = _run(Guard(inner, api_key=None, max_body=100), chunks)
    status, body, _ = _status(sent)
    assert status == 413 and "over the 9.53674e-05 MB limit" in body["error"]["message"]
    assert (inner.calls, read) == (0, 2)


def test_a_body_exactly_at_the_limit_passes() -> None:
    inner = Inner()
    _run(Guard(inner, api_key=None, max_body=100), [_body(b"x" * 100)])
    assert inner.body == b"x" * 100


def test_a_body_that_stops_arriving_is_a_408() -> None:
    inner = Inner()
    guard = Guard(inner, api_key=None, max_body=100, body_timeout=0.01)
    sent, _ = _run(guard, [_body(b"x", more=True)], block=True)
    status, body, _ = _status(sent)
    assert (status, body["error"]["code"]) == (408, "timeout")
    assert inner.calls == 0


def test_a_client_gone_mid_body_gets_nothing_and_the_app_nothing() -> None:
    inner = Inner()
    sent, _ = _run(Guard(inner, api_key=None, max_body=100), [_body(b"x", more=True)])
    assert sent == [] and inner.calls == 0


def test_non_http_scopes_pass_straight_through() -> None:
    inner = Inner()
    guard = Guard(inner, api_key=KEY, max_body=1)

    async def nothing() -> Any:
        raise AssertionError("the guard must not read a lifespan's messages")

    asyncio.run(guard({"type": "lifespan"}, nothing, nothing))
    assert inner.calls == 1
