"""What /v1/chat/completions answers, typed: OpenAI's ``chat.completion`` and
``chat.completion.chunk`` shapes (errors: ``errors.ErrorBody``), built from an ``Answer``, and
the server-sent-event stream of one job's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal, TypedDict

from fastapi.responses import StreamingResponse

from ixcdoc.serve.backend import Handle
from ixcdoc.serve.errors import model_failure
from ixcdoc.serve.events import Event, Run

# Answer.stop_reason -> OpenAI's finish_reason
FINISH = {"stop_token": "stop", "hook": "stop", "max_new_tokens": "length", "max_length": "length"}


class Head(TypedDict):
    """The fields every response and chunk of one request starts with."""

    id: str
    created: int
    model: str


class PromptTokensDetails(TypedDict):
    image_tokens: int
    text_tokens: int
    cached_tokens: int


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class Extension(TypedDict):
    """The ``ixcdoc`` field: how the page was read."""

    hd: int
    grids: list[list[int]]
    stop_reason: str
    truncated: bool


class Message(TypedDict):
    role: Literal["assistant"]
    content: str


class Choice(TypedDict):
    index: int
    message: Message
    finish_reason: str
    logprobs: None


class ChatCompletion(Head):
    """A whole answer (``stream: false``)."""

    object: Literal["chat.completion"]
    choices: list[Choice]
    usage: Usage
    ixcdoc: Extension


class Delta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str


class ChunkChoice(TypedDict):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: None


class _Chunk(Head):
    object: Literal["chat.completion.chunk"]
    choices: list[ChunkChoice]


class ChatCompletionChunk(_Chunk, total=False):
    """One server-sent event of a stream; the last, with ``include_usage``, has no choices but
    the usage and the ``ixcdoc`` field."""

    usage: Usage
    ixcdoc: Extension


def usage(answer: Any) -> Usage:
    """Token counts of ``answer`` (image and text tokens of the prompt apart)."""
    completion = len(answer.token_ids)
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "prompt_tokens_details": {
            "image_tokens": answer.n_image_tokens,
            "text_tokens": max(0, answer.prompt_tokens - answer.n_image_tokens),
            "cached_tokens": 0,
        },
    }


def extension(answer: Any) -> Extension:
    """The ``ixcdoc`` field of ``answer``: tier, crop grids, stop reason, truncation."""
    return {
        "hd": answer.hd,
        "grids": [list(g) for g in answer.grids],
        "stop_reason": answer.stop_reason,
        "truncated": answer.truncated,
    }


def finish_reason(answer: Any) -> str:
    """OpenAI's ``finish_reason`` for ``answer``."""
    return FINISH.get(answer.stop_reason, "stop")


def completion(head: Head, answer: Any) -> ChatCompletion:
    """The ``chat.completion`` body of ``answer``."""
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": finish_reason(answer),
                "logprobs": None,
            }
        ],
        "usage": usage(answer),
        "ixcdoc": extension(answer),
    }


def chunk(head: Head, delta: Delta, finish: str | None) -> ChatCompletionChunk:
    """One ``chat.completion.chunk`` with one choice."""
    choice: ChunkChoice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {**head, "object": "chat.completion.chunk", "choices": [choice]}


def usage_chunk(head: Head, answer: Any) -> ChatCompletionChunk:
    """The stream's last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {
        **head,
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": usage(answer),
        "ixcdoc": extension(answer),
    }


def sse(data: Any) -> bytes:
    """One server-sent event: a JSON value, or a bare string such as ``[DONE]``."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def completion_stream(
    run: Run, first: Event, head: Head, tokenizer: Any, include_usage: bool
) -> AsyncIterator[bytes]:
    """The events of ``run`` from ``first`` on, as server-sent chunks: the role, the text as
    it decodes, the finish (an error is its error body), then ``[DONE]``."""
    decoder = tokenizer.stream()
    yield sse(chunk(head, {"role": "assistant", "content": ""}, None))
    event = first
    while True:
        kind, value = event
        if kind == "token":
            text = decoder.push(value)
            if text:
                yield sse(chunk(head, {"content": text}, None))
        elif kind == "error":  # the server stopping it included (503's body)
            yield sse(model_failure(value).body)
            yield sse("[DONE]")
            return
        else:
            tail = decoder.flush()
            if tail:
                yield sse(chunk(head, {"content": tail}, None))
            yield sse(chunk(head, {}, finish_reason(value)))
            if include_usage:
                yield sse(usage_chunk(head, value))
            yield sse("[DONE]")
            return
        event = await run.events.get()


class EventStream(StreamingResponse):
    """A streaming response that cancels its job however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], handle: Handle) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.cancel()
