"""Many clients at once share the one model; a client that leaves mid-stream stops its own job.

Each test runs on both backends: ``chat`` (``--batch-size 1``: one request at a time on
``DocModel.chat``) and ``engine`` (the default: requests decoded together on the batched engine).
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from ixcdoc.serve import create_app
from tests.serve.helpers import (
    TIMEOUT,
    HeldModel,
    OverlapModel,
    ProbeEngineBackend,
    RecordingModel,
    chat_body,
    data_url,
    live_server,
    page_png,
)

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
BACKENDS = ["chat", "engine"]


def _ask_concurrently(url: str, questions: list[str], png: bytes, n: int) -> list[tuple[str, str]]:
    """``n`` clients at once through the openai package, half of them streaming."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
    try:

        def ask(i: int) -> tuple[str, str]:
            q = questions[i % len(questions)]
            body = chat_body(q, data_url(png), max_tokens=5)
            if i % 2:  # half of them stream
                stream = client.chat.completions.create(
                    model="tiny",
                    messages=body["messages"],
                    max_tokens=5,
                    stream=True,
                    extra_body={"ixcdoc": body["ixcdoc"]},
                )
                return q, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            r = client.chat.completions.create(
                model="tiny",
                messages=body["messages"],
                max_tokens=5,
                extra_body={"ixcdoc": body["ixcdoc"]},
            )
            return q, r.choices[0].message.content

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(ask, range(n)))
    finally:
        client.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_sixteen_concurrent_clients_are_all_answered(tiny: Any, kind: str) -> None:
    questions = [f"Question {i}: what is on the page?" for i in range(4)]
    png = page_png("Invoice 7")
    page = Image.open(io.BytesIO(png)).convert("RGB")
    want = {q: tiny.chat([page], q, hd=4, max_new_tokens=5).text for q in questions}
    if kind == "chat":
        model = OverlapModel(tiny)
        app = create_app(model, max_queue=16, batch_size=1)
    else:
        backend = ProbeEngineBackend(tiny, n_slots=4, max_len=512, max_queue=16)
        app = create_app(tiny, backend=backend)
    with live_server(app) as url:
        answers = _ask_concurrently(url, questions, png, 16)
    assert len(answers) == 16
    if kind == "chat":
        assert model.calls == 16
        assert model.most == 1  # never two generations on the model at once
    else:
        assert len(backend.answers) == len(questions)
        assert max(backend.rows, default=0) <= 4  # never more sequences than slots
    for q, text in answers:
        assert text == want[q]


def test_engine_requests_overlap_and_each_equals_chat(looping: Any) -> None:
    # The looping model never stops early, so every sequence runs its full 6 tokens and the
    # first one is still decoding when the others join it.
    questions = [f"Page {i}: read it." for i in range(4)]
    png = page_png("Overlap")
    page = Image.open(io.BytesIO(png)).convert("RGB")
    want = {q: looping.chat([page], q, hd=4, max_new_tokens=5) for q in questions}
    backend = ProbeEngineBackend(looping, n_slots=4, max_len=512, gather=4)
    with live_server(create_app(looping, backend=backend)) as url:
        answers = _ask_concurrently(url, questions, png, 4)
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            health = http.get("/health").json()
    assert max(backend.rows) > 1  # one decode forward served several requests
    assert health["batch_size"] == 4
    assert (health["running"], health["queued"], health["queue_depth"]) == (0, 0, 0)
    assert sorted(q for q, _ in answers) == questions
    for q, text in answers:
        assert text == want[q].text
        got = next(a for k, a in backend.answers.items() if k.endswith(q))
        assert got.token_ids == want[q].token_ids
        assert got.prompt_tokens == want[q].prompt_tokens


def _first_content(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                return delta["content"]
    raise AssertionError("the stream ended before any content")


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_client_leaving_mid_stream_stops_its_job_only(looping: Any, kind: str) -> None:
    if kind == "chat":
        model = RecordingModel(looping)
        app = create_app(model, batch_size=1)
    else:
        model = ProbeEngineBackend(looping, n_slots=2, max_len=4600)
        app = create_app(looping, backend=model)
    png = page_png("loop")
    with live_server(app) as url:
        leaver = httpx.Client(base_url=url, timeout=TIMEOUT)
        body = chat_body("Leave early.", data_url(png), stream=True, max_tokens=4000)
        with leaver.stream("POST", CHAT, json=body) as r:
            assert r.status_code == 200
            assert _first_content(r.iter_lines())
        leaver.close()  # the connection goes away in the middle of a 4000-token stream
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            others = [
                http.post(CHAT, json=chat_body(f"Stay {i}.", data_url(png), max_tokens=5))
                for i in range(2)
            ]
            streamed = http.post(
                CHAT, json=chat_body("Stay streaming.", data_url(png), stream=True, max_tokens=5)
            )
            health = http.get("/health").json()
    left = next(a for q, a in model.answers.items() if q.endswith("Leave early."))
    assert left.stop_reason == "callback"
    assert len(left.token_ids) < 4000
    for i, r in enumerate(others):
        assert r.status_code == 200
        stayed = next(a for q, a in model.answers.items() if q.endswith(f"Stay {i}."))
        assert r.json()["choices"][0]["message"]["content"] == stayed.text
        assert len(stayed.token_ids) == 5
    assert streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert health["queue_depth"] == 0


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_client_leaving_before_its_answer_stops_its_job(looping: Any, kind: str) -> None:
    if kind == "chat":
        model = HeldModel(looping)
        app = create_app(model, batch_size=1)
    else:
        model = ProbeEngineBackend(looping, n_slots=2, max_len=4600, hold=True)
        app = create_app(looping, backend=model)
    with live_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(chat_body("Leave.", max_tokens=4000)).encode()
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert model.entered.wait(TIMEOUT)  # the job is on the model
        sock.close()  # the client gives up before any answer
        model.release.set()
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            r = http.post(CHAT, json=chat_body("Next.", max_tokens=3))
    assert r.status_code == 200
    if kind == "chat":
        left, following = model.answers
    else:  # both ran at once: tell them apart by their question
        left = next(a for q, a in model.answers.items() if q.endswith("Leave."))
        following = next(a for q, a in model.answers.items() if q.endswith("Next."))
    assert left.stop_reason == "callback"
    assert len(left.token_ids) < 4000
    assert len(following.token_ids) == 3
