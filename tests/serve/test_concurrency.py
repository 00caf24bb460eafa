"""Many clients at once share the one model; a client that leaves mid-stream stops its own job."""

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
    RecordingModel,
    chat_body,
    data_url,
    live_server,
    page_png,
)

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"


def test_sixteen_concurrent_clients_are_all_answered(tiny: Any) -> None:
    questions = [f"Question {i}: what is on the page?" for i in range(4)]
    png = page_png("Invoice 7")
    page = Image.open(io.BytesIO(png)).convert("RGB")
    want = {q: tiny.chat([page], q, hd=4, max_new_tokens=5).text for q in questions}
    model = OverlapModel(tiny)
    with live_server(create_app(model, max_queue=16)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)

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

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
        client.close()
    assert len(answers) == 16
    assert model.calls == 16
    assert model.most == 1  # never two generations on the model at once
    for q, text in answers:
        assert text == want[q]


def _first_content(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                return delta["content"]
    raise AssertionError("the stream ended before any content")


def test_a_client_leaving_mid_stream_stops_its_job_only(looping: Any) -> None:
    model = RecordingModel(looping)
    png = page_png("loop")
    with live_server(create_app(model)) as url:
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


def test_a_client_leaving_before_its_answer_stops_its_job(looping: Any) -> None:
    model = HeldModel(looping)
    with live_server(create_app(model)) as url:
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
    left, following = model.answers
    assert left.stop_reason == "callback"
    assert len(left.token_ids) < 4000
    assert len(following.token_ids) == 3
