"""Image URLs from a request to bytes: which URLs the server reads, and how.

``data:`` URLs are decoded in memory; ``http(s):`` URLs are fetched only when the server was
started with ``--allow-urls``, within one deadline for the whole fetch; every other scheme
(``file:``, bare paths, ...) is refused. No path from a request is ever opened: the bytes go
to ``ixcdoc.inputs.open_bytes`` (``pages.py``), which sniffs the format (PNG, JPEG, WebP, PDF,
... as for the CLI) and applies the pixel limit.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ixcdoc.errors import InputError, UsageError

FETCH_TIMEOUT_S = 20.0  # the whole fetch: connecting, redirects, headers and body


class UrlRefused(UsageError):
    """An image URL whose scheme the server does not read (or not without --allow-urls)."""

    code = "invalid_image_url"


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:[<mime>][;base64],<data>`` URL (the MIME type is not trusted)."""
    head, comma, payload = url.partition(",")
    if not comma:
        raise UrlRefused(f"malformed data URL {_short(url)!r}: no comma")
    if head.lower().endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise UrlRefused("data URL: the base64 payload does not decode") from None
    return urllib.parse.unquote_to_bytes(payload)


class _Deadline:
    """One deadline for a whole fetch: when it passes, every socket the fetch opened is shut
    down, which ends a read blocked in another thread (a socket timeout is per read, so a
    server that drips a byte at a time would hold the fetch for as long as it liked)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            late = self.expired
        if late:
            self._shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def connector(self) -> Any:
        """``socket.create_connection`` whose sockets this deadline watches."""

        def connect(*args: Any, **kwargs: Any) -> socket.socket:
            return self.watch(socket.create_connection(*args, **kwargs))

        return connect


def _watched(cls: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = cls(*args, **kwargs)
        conn._create_connection = deadline.connector()  # type: ignore[attr-defined]
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        conn = _watched(http.client.HTTPSConnection, self.deadline)
        return self.do_open(conn, req, context=self._context)  # type: ignore[attr-defined]


def fetch(url: str, max_bytes: int, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """GET an http(s) URL: at most ``max_bytes`` bytes, the whole fetch (connecting, redirects,
    headers and body) within ``timeout`` seconds. The name lookup is the system's."""
    req = urllib.request.Request(url, headers={"User-Agent": "ixcdoc-serve"})
    with _Deadline(timeout) as deadline:
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
        try:
            with opener.open(req, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            if deadline.expired:
                data = b""
            else:
                raise InputError(_short(url), f"cannot fetch: {e}", code="unreadable") from None
    if deadline.expired:  # a cut-off body can look complete: the deadline decides
        raise InputError(
            _short(url), f"not fetched within {timeout:g} s (the whole download)", code="unreadable"
        )
    if len(data) > max_bytes:
        raise InputError(_short(url), f"larger than {max_bytes:,} bytes", code="too_large")
    return data


def fetched(url: str, *, allow_urls: bool) -> bool:
    """True for an http(s) URL the server fetches, False for a data: URL; any other URL (or an
    http one without ``allow_urls``) is refused, by the rules in this module's docstring."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return False
    if scheme in ("http", "https"):
        if not allow_urls:
            raise UrlRefused(
                "http(s) image URLs are refused (the server would fetch them on your behalf); "
                "send the image as a data URL, or start the server with --allow-urls"
            )
        return True
    raise UrlRefused(
        f"image URL {_short(url)!r} is neither a data: URL nor http(s): send the image bytes "
        "as a data URL (data:image/png;base64,...)"
    )
