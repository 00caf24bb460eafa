"""The ASGI middleware in front of every route: the API key, then the body's size and time.

The request's headers are the HTTP protocol's to bound (``transport.py``); from the moment they
are in, the body has ``BODY_TIMEOUT_S`` to arrive, whatever its pace.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from ixcdoc.errors import UsageError
from ixcdoc.serve.errors import ApiError

# A whole body within this (20 MB at ~350 KB/s): uvicorn has no such deadline, and a client
# that sends part of a body and stops would hold its connection and buffer forever. The value
# is the --timeout-request-complete that uvicorn's issue #157 proposed and never shipped.
BODY_TIMEOUT_S = 60.0


def check_api_key(key: str | None) -> str | None:
    """``key`` if a client can send it in ``Authorization: Bearer KEY``, else a UsageError.

    HTTP clients send header values as bytes: a non-ASCII key goes out as UTF-8 (or Latin-1)
    and never equals the key here; whitespace around it is dropped on the way, so an empty,
    blank or padded key would lock every client out.
    """
    if key is None:
        return None
    if not key.strip():
        raise UsageError("--api-key is empty or blank: no client can send it; give a real key")
    if not (key.isascii() and key.isprintable()):
        raise UsageError(
            "--api-key must be printable ASCII: HTTP sends a header as bytes, so a client's "
            "non-ASCII or control characters never match it"
        )
    if key != key.strip():
        raise UsageError(
            "--api-key starts or ends with whitespace, which HTTP drops from the header: "
            "no client can send it"
        )
    return key


async def _send_error(send: Any, err: ApiError) -> None:
    body = json.dumps(err.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guard:
    """ASGI middleware: 401 without the right key on /v1, 413 for a body over the limit, 408
    for a body that does not arrive within ``body_timeout`` seconds.

    The body is read here, chunk by chunk, and refused as soon as it passes the limit (or at
    once from Content-Length); the route then gets it replayed in one message, and later
    ``receive`` calls go to the server so that disconnects are still seen.
    """

    def __init__(
        self, app: Any, *, api_key: str | None, max_body: int, body_timeout: float = BODY_TIMEOUT_S
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body
        self.body_timeout = body_timeout

    def _key_error(self, headers: dict[bytes, bytes]) -> ApiError | None:
        if self.api_key is None:
            return None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ApiError(
                401,
                "missing API key: send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return ApiError(401, "incorrect API key", code="invalid_api_key")
        return None

    def _too_large(self) -> ApiError:
        mb = self.max_body / 2**20
        message = f"request body over the {mb:g} MB limit (--max-body-mb)"
        return ApiError(413, message, code="too_large")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"].startswith("/v1"):
            err = self._key_error(headers)
            if err is not None:
                await _send_error(send, err)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_error(send, self._too_large())
            return
        chunks: list[bytes] = []
        total = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                message = f"the request body did not arrive within {self.body_timeout:g} s"
                await _send_error(send, ApiError(408, message, code="timeout"))
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await _send_error(send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
