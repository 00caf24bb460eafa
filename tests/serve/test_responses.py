"""serve/responses.py: OpenAI's chat.completion and chunk shapes, written out by hand, from a
real Answer; and the event stream of one job, token by token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ixcdoc.answer import Answer
from ixcdoc.serve import responses
from ixcdoc.serve.backend import Cancelled
from ixcdoc.serve.events import Run

HEAD: responses.Head = {"id": "chatcmpl-1", "created": 7, "model": "m"}
ANSWER = Answer(
    text="Total: 42",
    token_ids=[5, 6, 7],
    stop_reason="max_new_tokens",
    hd=9,
    grids=[(3, 2)],
    n_image_tokens=100,
    prompt_tokens=130,
    truncated=True,
)
USAGE = {
    "prompt_tokens": 130,
    "completion_tokens": 3,
    "total_tokens": 133,
    "prompt_tokens_details": {"image_tokens": 100, "text_tokens": 30, "cached_tokens": 0},
}
EXTENSION = {"hd": 9, "grids": [[3, 2]], "stop_reason": "max_new_tokens", "truncated": True}


def test_a_completion_in_openais_shape_and_key_order() -> None:
    body = responses.completion(HEAD, ANSWER)
    assert json.dumps(body) == json.dumps(
        {
            "id": "chatcmpl-1",
            "created": 7,
            "model": "m",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Total: 42"},
                    "finish_reason": "length",
                    "logprobs": None,
                }
            ],
            "usage": USAGE,
            "ixcdoc": EXTENSION,
        }
    )


def test_stop_reasons_map_to_openais_finish_reasons() -> None:
    def reason(stop: str) -> str:
        return responses.finish_reason(Answer("", [], stop, 1, [], 0, 0))

    assert [reason(s) for s in ("stop_token", "hook", "max_new_tokens", "max_length")] == [
        "stop",
        "stop",
        "length",
        "length",
    ]
    assert reason("callback") == "stop"


class Letters:
    """A tokenizer stream whose token i is the letter chr(96 + i); 0 holds back until flush."""

    def stream(self) -> Any:
        held: list[str] = []

        class Decoder:
            def push(self, tid: int) -> str:
                if tid == 0:
                    held.append("!")
                    return ""
                return chr(96 + tid)

            def flush(self) -> str:
                return "".join(held)

        return Decoder()


def _events(events: list[tuple[str, Any]], include_usage: bool) -> list[Any]:
    async def go() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for e in events[1:]:
            queue.put_nowait(e)
        run = Run(handle=None, events=queue)  # type: ignore[arg-type]
        stream = responses.completion_stream(run, events[0], HEAD, Letters(), include_usage)
        return [chunk async for chunk in stream]

    out = []
    for raw in asyncio.run(go()):
        text = raw.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        data = text[len("data: ") : -2]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {**HEAD, "object": "chat.completion.chunk", "choices": [choice]}


def test_a_stream_is_role_text_held_tail_finish_usage_done() -> None:
    events = [("token", 1), ("token", 0), ("token", 2), ("done", ANSWER)]
    assert _events(events, include_usage=True) == [
        _chunk({"role": "assistant", "content": ""}, None),
        _chunk({"content": "a"}, None),
        _chunk({"content": "b"}, None),
        _chunk({"content": "!"}, None),
        _chunk({}, "length"),
        {
            **HEAD,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": USAGE,
            "ixcdoc": EXTENSION,
        },
        "[DONE]",
    ]
    assert _events(events, include_usage=False)[-2:] == [_chunk({}, "length"), "[DONE]"]


def test_a_stream_that_fails_ends_with_its_error_body_then_done() -> None:
    stopped = Cancelled("the server is shutting down: the request was stopped after 1 tokens")
    out = _events([("token", 1), ("error", stopped)], include_usage=True)
    assert out[-2:] == [
        {
            "error": {
                "message": str(stopped),
                "type": "server_error",
                "param": None,
                "code": "shutting_down",
            }
        },
        "[DONE]",
    ]
