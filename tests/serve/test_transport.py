"""Below the routes: deadlines for headers and bodies, JSON for what uvicorn cannot parse, keys
a client can send, and text the tokenizer can read; every failure one line of OpenAI JSON."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ixcdoc.cli import app as cli_app
from ixcdoc.errors import EXIT_USAGE
from ixcdoc.serve import create_app
from tests.serve.helpers import TIMEOUT, chat_body, live_server

CHAT = "/v1/chat/completions"
DEADLINE = 0.5  # the servers below give headers and bodies this long


@pytest.fixture(scope="module")
def server(twin: Any) -> Iterator[str]:
    app = create_app(twin, batch_size=1, body_timeout=DEADLINE)
    with live_server(app, header_timeout=DEADLINE) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), lines[0]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    return err


def test_headers_that_never_finish_get_a_408_and_the_connection_closes(server: str) -> None:
    """uvicorn held a request whose headers never ended for ever (its keep-alive timeout only
    runs between requests)."""
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        err = _error(_read_all(sock), 408, "timeout")
    assert f"headers did not arrive within {DEADLINE:g} s" in err["message"]


def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"status"' not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # the second request stalls
        _error(_read_all(sock), 408, "timeout")


def test_a_connection_that_sends_nothing_is_closed_without_a_word(server: str) -> None:
    with _connect(server) as sock:
        assert _read_all(sock) == b""


def test_a_body_that_stops_short_gets_a_408(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nContent-Length: 100\r\n\r\n{"messages": ['
        )
        err = _error(_read_all(sock), 408, "timeout")
    assert f"body did not arrive within {DEADLINE:g} s" in err["message"]


def test_headers_over_the_limit_get_a_json_431(server: str) -> None:
    """uvicorn answers these with a plain-text 400; a client of an OpenAI API reads JSON."""
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
        err = _error(_read_all(sock), 431, "headers_too_large")
    assert "16 KiB" in err["message"]


def test_a_malformed_request_line_gets_a_json_400(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        _error(_read_all(sock), 400, "invalid_http")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": "a\\ud800b"}], "messages.0.content"),
        (
            [
                {"role": "system", "content": "fine"},
                {"role": "user", "content": [{"type": "text", "text": "\\udfff"}]},
            ],
            "messages.1.content.0.text",
        ),
        (
            [{"role": "system", "content": "\\ud83d"}, {"role": "user", "content": "hi"}],
            "messages.0.content",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "x\\udc00"},
                {"role": "user", "content": "again"},
            ],
            "messages.1.content",
        ),
    ],
)
def test_a_lone_surrogate_in_any_message_is_400_naming_it(
    server: str, messages: list[dict[str, Any]], param: str
) -> None:
    """JSON may escape half of a UTF-16 pair; it is no text, and failed in the tokenizer as a
    500 "the model failed" once the request had waited its turn."""
    raw = json.dumps({"messages": messages, "max_tokens": 2}).replace("\\\\u", "\\u")
    with httpx.Client(base_url=server, timeout=TIMEOUT) as http:
        r = http.post(CHAT, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert "lone UTF-16 surrogate" in err["message"]


def test_a_body_that_is_not_utf8_is_400(server: str) -> None:
    """A surrogate encoded straight into the bytes: json.loads(bytes) let it through."""
    raw = b'{"messages": [{"role": "user", "content": "a\xed\xa0\x80b"}], "max_tokens": 2}'
    with httpx.Client(base_url=server, timeout=TIMEOUT) as http:
        r = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_json"
    at = raw.index(b"\xed")
    assert f"not UTF-8 (byte {at}:" in err["message"]


def test_a_surrogate_pair_is_text(server: str) -> None:
    raw = '{"messages": [{"role": "user", "content": "\\ud83d\\ude00?"}], "max_tokens": 2}'
    with httpx.Client(base_url=server, timeout=TIMEOUT) as http:
        r = http.post(CHAT, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_a_temperature_that_overflows_sampling_is_400(server: str) -> None:
    with httpx.Client(base_url=server, timeout=TIMEOUT) as http:
        r = http.post(CHAT, json=chat_body("hi", temperature=1e-39))
        ok = http.post(CHAT, json=chat_body("hi", temperature=0.01, seed=1))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "temperature" and err["code"] == "invalid_request"
    assert "0 (greedy) or at least 0.01" in err["message"]
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("sk-é", "printable ASCII"),
        ("   ", "empty or blank"),
        ("", "empty or blank"),
        (" sk-1", "whitespace"),
        ("sk-\x01", "printable ASCII"),
    ],
)
def test_a_key_no_client_can_send_is_a_usage_error_before_the_model_loads(
    key: str, says: str, tmp_path: Path
) -> None:
    """A non-ASCII key never matched a UTF-8 client, a blank one locked everyone out."""
    args = ["serve", "--api-key", key, "--model", str(tmp_path / "none")]
    res = CliRunner().invoke(cli_app, args)
    assert res.exit_code == EXIT_USAGE
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0] and says in lines[0], lines
    assert "Traceback" not in res.output
