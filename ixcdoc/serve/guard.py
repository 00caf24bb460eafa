"""The ASGI middleware in front of every route: the API key, then the body size."""

from __future__ import annotations

import hmac
import json
from typing import Any

from ixcdoc.serve.errors import ApiError


async def _send_error(send: Any, err: ApiError) -> None:
    body = json.dumps(err.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guard:
    """ASGI middleware: 401 without the right key on /v1, 413 for a body over the limit.

    The body is read here, chunk by chunk, and refused as soon as it passes the limit (or at
    once from Content-Length); the route then gets it replayed in one message, and later
    ``receive`` calls go to the server so that disconnects are still seen.
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body

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
        while True:
            message = await receive()
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
