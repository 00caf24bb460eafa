"""``--allow-urls`` against a server that drips its answer: one deadline for the whole fetch,
and fetches that never hold up the requests that bring their images along."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ixcdoc.serve import create_app
from tests.serve.helpers import TIMEOUT, chat_body, data_url, live_server, page_png

CHAT = "/v1/chat/completions"


class DripServer:
    """An HTTP server on 127.0.0.1 that sends its headers, then one byte of a PNG every tenth
    of a second, forever (until ``stop``): a read never waits long, the fetch never ends."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/page.png"
        self.stopped = threading.Event()
        self.lock = threading.Condition()
        self.open = 0  # connections being dripped to now
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _drip(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)  # the request
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
            with self.lock:
                self.open += 1
                self.lock.notify_all()
            try:
                while not self.stopped.wait(0.1):  # the drip's pace, not a test's wait
                    conn.sendall(b"\x89")
            finally:
                with self.lock:
                    self.open -= 1
                    self.lock.notify_all()

    def wait_open(self, n: int) -> None:
        """Until ``n`` fetches are being dripped to at once."""
        with self.lock:
            assert self.lock.wait_for(lambda: self.open >= n, TIMEOUT), f"{self.open} of {n}"

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.sock.close()
        for t in self.threads:
            t.join(TIMEOUT)


@pytest.fixture
def drip(monkeypatch: pytest.MonkeyPatch) -> Iterator[DripServer]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = DripServer()
    try:
        yield server
    finally:
        server.stop()


def test_a_fetch_that_drips_forever_ends_at_its_deadline(twin: Any, drip: DripServer) -> None:
    """The timeout was per read: a byte every 0.1 s kept the fetch alive for as long as the
    other server liked. Now the whole fetch has one deadline, and the client a 400 saying so."""
    app = create_app(twin, allow_urls=True, batch_size=1, fetch_timeout=1.0)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        r = http.post(CHAT, json=chat_body("Slow?", drip.url))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unreadable"
    assert "not fetched within 1 s (the whole download)" in err["message"]


def test_slow_fetches_do_not_hold_up_requests_with_data_urls(twin: Any, drip: DripServer) -> None:
    """Two fetches drip (a fetch held one of the two image-decode slots, so two of them held
    every request up): a request with its image in a data URL is answered meanwhile."""
    app = create_app(twin, allow_urls=True, batch_size=1, fetch_timeout=TIMEOUT)
    results: list[int] = []
    with live_server(app) as url:
        clients = [httpx.Client(base_url=url, timeout=TIMEOUT) for _ in range(3)]
        try:
            fetching = [
                threading.Thread(
                    target=lambda c=c: results.append(
                        c.post(CHAT, json=chat_body("Slow?", drip.url)).status_code
                    )
                )
                for c in clients[:2]
            ]
            for t in fetching:
                t.start()
            drip.wait_open(2)
            r = clients[2].post(CHAT, json=chat_body("Fast.", data_url(page_png())))
            still = drip.open  # the two fetches were dripping all along
            drip.stop()  # their fetches end (a body that stops short: not an image)
            for t in fetching:
                t.join(TIMEOUT)
        finally:
            for c in clients:
                c.close()
    assert r.status_code == 200, r.text
    assert still == 2
    assert results == [400, 400]
