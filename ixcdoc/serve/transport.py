"""uvicorn as ``ixcdoc serve`` runs it: deadlines and JSON errors below the app, and a shutdown
that answers the requests in flight.

uvicorn (0.30 to 0.55) has no deadline for a request's headers (``timeout_keep_alive`` only
runs between requests, and any byte received cancels it), and answers a request it cannot
parse (a 300 KB header, a broken request line) with a plain-text 400. ``http_protocol`` is its
h11 protocol with both fixed, passed as ``uvicorn.Config(http=...)``, which takes a protocol
class: the headers must arrive within ``HEADER_TIMEOUT_S`` of a request's first byte (of the
connection, for its first request), or the client gets a 408 and the connection is closed;
unparsable requests get a 400, and headers over ``MAX_HEADER_BYTES`` a 431, both in OpenAI's
JSON shape. (The body's deadline is the app's: ``guard.Guard``.)

``Server`` is uvicorn's server whose shutdown (Ctrl-C, SIGTERM) first stops the backend's
jobs, so a request in flight gets its 503 (a stream: an error event, then ``[DONE]``) before
uvicorn waits for the connections to close; and a SIGTERM then ends ``run`` with
``Terminated`` instead of killing the process with no word.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ixcdoc.errors import Terminated
from ixcdoc.serve.errors import ApiError

# The request line and headers within this, from the request's first byte: the value uvicorn's
# issue #157 proposed for --timeout-request-start, which uvicorn never shipped.
HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 16 * 1024  # h11's default, set explicitly so the 431 below can name it
GRACEFUL_SHUTDOWN_S = 5  # what the requests in flight get to finish once stopped
# After an error the protocol answers itself, what the client still sends is read and dropped
# for this long before the connection closes: closing with unread data sends a reset, which
# throws away the answer before the client reads it (a 300 KB header did just that).
LINGER_S = 2.0


def _response(status: int, reason: str, err: ApiError) -> bytes:
    body = json.dumps(err.body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def http_protocol(header_timeout: float = HEADER_TIMEOUT_S) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's headers, and JSON errors."""

    class Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._heard = False  # a byte of the request the timer is for has arrived
            self._header_timer: asyncio.TimerHandle | None = None
            self._refused = False  # answered here: the rest of what arrives is dropped
            self._arm()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a kept-alive connection begins
            self._heard = True
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # its headers are in: the body is the app's to time
                self._disarm()
                self._heard = False

        def shutdown(self) -> None:
            if self._refused:  # h11 may be in its error state: nothing more to say
                self.transport.close()
            else:
                super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _refuse(self, response: bytes) -> None:
            """Send ``response``, end our side, drop what still arrives, close soon."""
            self._disarm()
            self._refused = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if not self._heard:  # a connection that never sent a byte is closed without a word
                self.transport.close()
                return
            message = f"the request headers did not arrive within {header_timeout:g} s"
            self._refuse(_response(408, "Request Timeout", ApiError(408, message, code="timeout")))

        def send_400_response(self, msg: str) -> None:
            """What uvicorn sends for a request h11 cannot parse, as OpenAI-style JSON."""
            if len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:
                message = f"request headers over {MAX_HEADER_BYTES // 1024} KiB"
                err = ApiError(431, message, code="headers_too_large")
                self._refuse(_response(431, "Request Header Fields Too Large", err))
            else:
                message = "invalid HTTP request: a malformed request line or header"
                err = ApiError(400, message, code="invalid_http")
                self._refuse(_response(400, "Bad Request", err))

    return Protocol


def config(
    app: Any, *, log_level: str = "warning", header_timeout: float = HEADER_TIMEOUT_S
) -> uvicorn.Config:
    """The uvicorn settings of ``ixcdoc serve`` for ``app``."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        http=http_protocol(header_timeout),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


class Server(uvicorn.Server):
    """uvicorn's server; its shutdown calls ``stop_jobs`` (the backend's ``close``) first."""

    def __init__(self, config: uvicorn.Config, stop_jobs: Callable[[], None]) -> None:
        """``stop_jobs`` ends every job in flight with an error the requests report (503)."""
        super().__init__(config)
        self.stop_jobs = stop_jobs

    async def shutdown(self, sockets: Any = None) -> None:
        """Stop accepting, stop the jobs (their requests answer 503), then uvicorn's own."""
        for server in self.servers:
            server.close()
        await asyncio.to_thread(self.stop_jobs)
        await super().shutdown(sockets)

    def run(self, sockets: Any = None) -> None:
        """Serve until stopped; after a SIGTERM's graceful shutdown, raise ``Terminated``.

        uvicorn handles SIGINT and SIGTERM itself, then raises the signal again once it has
        shut down; SIGINT then is KeyboardInterrupt, SIGTERM would kill the process silently.
        """
        if threading.current_thread() is not threading.main_thread():
            super().run(sockets)
            return

        def terminated(signum: int, frame: Any) -> None:
            raise Terminated("terminated")

        previous = signal.signal(signal.SIGTERM, terminated)
        try:
            super().run(sockets)
        finally:
            signal.signal(signal.SIGTERM, previous)
