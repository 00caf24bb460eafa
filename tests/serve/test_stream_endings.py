"""How an answer ends on the wire: finish_reason at the position limit, and the usage chunk
only when the client asks for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ixcdoc.serve import create_app
from tests.engine.test_position_limit import POSITIONS, short_context_checkpoint
from tests.serve.helpers import TIMEOUT, chat_body, data_url, live_server, page_png

CHAT = "/v1/chat/completions"


def _events(r: httpx.Response) -> list[Any]:
    """The SSE data of a streamed response, JSON decoded ("[DONE]" kept as a string)."""
    out: list[Any] = []
    for line in r.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import ixcdoc

    path: Path = tmp_path_factory.mktemp("short-serve") / "tiny"  # the name requests ask for
    return ixcdoc.load(short_context_checkpoint(path), device="cpu")


@pytest.mark.parametrize("batch_size", [1, 2])
def test_an_answer_cut_at_the_position_limit_finishes_with_length(
    short: Any, batch_size: int
) -> None:
    # max_tokens 400 is far past what the 300 positions leave after the prompt
    body = chat_body("hi", data_url(page_png()), max_tokens=400)
    app = create_app(short, batch_size=batch_size)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        r = http.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["usage"]["total_tokens"] == POSITIONS  # the answer ran to the limit
        assert out["usage"]["completion_tokens"] < 400
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["ixcdoc"]["stop_reason"] == "max_length"
        streamed = _events(http.post(CHAT, json={**body, "stream": True}))
        finishes = [e["choices"][0]["finish_reason"] for e in streamed[:-1] if e["choices"]]
        assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    short.model.reset_caches()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_usage_chunk_is_sent_only_when_include_usage_is_true(tiny: Any, batch_size: int) -> None:
    body = chat_body("hi", data_url(page_png()), stream=True)
    app = create_app(tiny, batch_size=batch_size)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:

        def usage_chunks(**fields: Any) -> list[Any]:
            events = _events(http.post(CHAT, json={**body, **fields}))
            assert events[-1] == "[DONE]"
            return [e for e in events[:-1] if "usage" in e]

        assert usage_chunks() == []
        assert usage_chunks(stream_options={"include_usage": False}) == []
        assert usage_chunks(stream_options={}) == []
        [last] = usage_chunks(stream_options={"include_usage": True})
        assert last["choices"] == [] and last["usage"]["completion_tokens"] >= 1
