"""The request body to a ``ChatCompletionRequest`` and its ``Conversation``, off the event loop.

``read_request`` runs on a worker thread (``asyncio.to_thread``), and is bounded: validating
an 11 MB body of 220,000 messages took 1.9 s in pydantic, which holds the GIL all along, so
even on a thread it held up every other client (``/health`` took 1.5 s). The messages and
content parts are counted first (a cheap Python loop) and refused past ``max_parts``, what
the model's positions can hold, before validation starts. Every failure is an ``ApiError``
(400) naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from ixcdoc.serve.errors import ApiError, invalid_request
from ixcdoc.serve.schema import ChatCompletionRequest, Conversation, to_conversation

# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): the only way one reaches a string, since
# the body must be valid UTF-8. Only bodies with one are searched for a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(data: Any) -> str | None:
    """The path (``messages.0.content``) of a string, or a key, holding a lone surrogate."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:  # no recursion: the JSON may be nested as deep as the parser allows
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                stack += [(path, k), (f"{path}.{k}" if path else str(k), v)]
        elif isinstance(value, list):
            stack += [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value)]
    return None


def _parts(data: Any) -> int:
    """Messages plus the content parts of list contents (0 for a body of another shape)."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return 0
    return len(messages) + sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
    )


def parse_request(raw: bytes, max_parts: int) -> ChatCompletionRequest:
    """The body as a request: valid JSON (UTF-8), at most ``max_parts`` messages and content
    parts, no lone surrogates, the schema's fields."""
    try:
        # Strict UTF-8 first: json.loads(bytes) lets UTF-8-encoded surrogates through
        # ("surrogatepass"), and detects UTF-16 and UTF-32, which no OpenAI client sends.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"malformed JSON: the body is not UTF-8 (byte {e.start}: {e.reason})"
        raise ApiError(400, message, code="invalid_json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"malformed JSON at byte {e.pos}: {e.msg}", code="invalid_json"
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply", code="invalid_json") from None
    n = _parts(data)
    if n > max_parts:
        raise ApiError(
            400,
            f"{n:,} messages and content parts, over the {max_parts:,} that the model's "
            "positions can hold (each takes one at least)",
            code="invalid_request",
            param="messages",
        )
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(data)
        if where is not None:
            # json.loads keeps "\ud800" as a lone surrogate, which is no text: the tokenizer
            # (and any UTF-8 encoder) fails on it later, after the request waited its turn.
            raise ApiError(
                400,
                f"{where}: a lone UTF-16 surrogate (\\ud800-\\udfff without its pair) is not text",
                code="invalid_request",
                param=where,
            )
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise invalid_request(e.errors()) from None


def read_request(raw: bytes, max_parts: int) -> tuple[ChatCompletionRequest, Conversation]:
    """The parsed request and its messages folded into one query (blocking: a worker thread).

    Raises ``ApiError``, or ``UsageError`` for messages that fold into no query."""
    body = parse_request(raw, max_parts)
    return body, to_conversation(body.messages)
