"""Every error a client can cause, over raw HTTP: OpenAI's JSON shape and the right status."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ixcdoc.serve import create_app
from tests.serve.helpers import (
    TIMEOUT,
    CountingBackend,
    FailingModel,
    FailsAfterATokenModel,
    HeldModel,
    ProbeEngineBackend,
    chat_body,
    data_url,
    live_server,
    page_png,
)

KEY = "sk-errors"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.fixture(scope="module")
def server(twin: Any) -> Iterator[str]:
    # On its own model: the tests below start engines on ``tiny`` while this server runs.
    app = create_app(twin, api_key=KEY, max_body_mb=0.25, max_pixels=20_000, batch_size=2)
    with live_server(app) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=TIMEOUT) as c:
        yield c


def test_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post(
        CHAT, content=b'{"messages": [', headers={**AUTH, "content-type": "application/json"}
    )
    err = _error(r, 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "x"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "ixcdoc": {"hd": "huge"}}, "ixcdoc.hd"),
        ({"messages": [{"role": "user", "content": "hi"}], "seed": 10**30}, "seed"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "ixcdoc": {"speculate": "on"}},
            "ixcdoc.speculate",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "ixcdoc": {"draft": 42}},
            "ixcdoc.draft",
        ),
    ],
)
def test_schema_errors_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400, "invalid_request")
    assert err["param"] is not None and err["param"].startswith(param)


def test_a_draft_over_the_limit_is_one_line_400(http: httpx.Client) -> None:
    from ixcdoc.tasks import DRAFT_CHARS

    body = chat_body("hi", ixcdoc={"draft": "x" * (DRAFT_CHARS + 1)})
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400, "invalid_request")
    assert err["param"] == "ixcdoc.draft"
    assert err["message"] == f"ixcdoc.draft: String should have at most {DRAFT_CHARS} characters"
    body = chat_body("hi", ixcdoc={"speculate": "on"})
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400, "invalid_request")
    assert err["param"] == "ixcdoc.speculate"
    assert err["message"].endswith("speculate must be one of auto, off, got 'on'")


def test_the_draft_and_speculate_reach_the_engines_request(tiny: Any) -> None:
    seen: list[tuple[str | None, str]] = []

    class Recording(ProbeEngineBackend):
        def _before_prefill(self, request: Any) -> None:
            seen.append((request.draft, request.speculate))

    backend = Recording(tiny, n_slots=2, max_len=512)
    with (
        live_server(create_app(tiny, backend=backend)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        for extension in ({"draft": "Total 42.00", "speculate": "off"}, {}):
            body = chat_body("hi", ixcdoc={"hd": 4, **extension})
            assert http.post(CHAT, json=body).status_code == 200
    assert seen == [("Total 42.00", "off"), (None, "auto")]


def test_json_nested_too_deeply_is_400(http: httpx.Client) -> None:
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = http.post(CHAT, content=deep, headers={**AUTH, "content-type": "application/json"})
    _error(r, 400, "invalid_json")


def test_a_tier_whose_crops_overflow_the_prompt_is_400(http: httpx.Client, twin: Any) -> None:
    # Tiny model: 56-px crops of 4 tokens each, 16384 positions -> at most HD4096; the CLI's
    # own ceiling (tasks.MAX_HD, 1000) answers first, with the same status and parameter.
    assert twin.config.max_length == 16384 and twin.config.tile == 56
    for hd in (1001, 4097):
        body = chat_body("hi", data_url(page_png()), ixcdoc={"hd": hd})
        err = _error(http.post(CHAT, json=body, headers=AUTH), 400, "invalid_request")
        assert err["param"] == "ixcdoc.hd"
        assert f"--hd {hd} is too large" in err["message"]


def test_images_past_the_position_limit_are_400(http: httpx.Client) -> None:
    # Five images at HD1000 take about 5 x 1000 x 4 tokens on the tiny model: over 16384,
    # while each alone fits.
    png = data_url(page_png())
    body = chat_body("compare", png, png, png, png, png, ixcdoc={"hd": 1000})
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400, "too_many_image_tokens")
    assert "16,384" in err["message"]


def test_a_body_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    _error(http.post(CHAT, json=[1, 2], headers=AUTH), 400)


def test_the_last_message_must_be_the_users(http: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400)
    assert "last message" in err["message"]


def test_missing_key_is_401(http: httpx.Client) -> None:
    err = _error(http.post(CHAT, json=chat_body("hi")), 401, "invalid_api_key")
    assert "missing" in err["message"]
    _error(http.get("/v1/models"), 401, "invalid_api_key")


def test_wrong_key_is_401(http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat_body("hi"), headers={"Authorization": "Bearer sk-wrong"})
    err = _error(r, 401, "invalid_api_key")
    assert "incorrect" in err["message"]


def test_health_needs_no_key_and_reports_the_model(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["model_loaded"] is True
    assert h["device"] == "cpu"
    assert h["queue_depth"] == 0


def test_an_image_over_the_pixel_limit_is_413(http: httpx.Client) -> None:
    big = data_url(page_png(size=(200, 150)))  # 30,000 pixels > 20,000
    err = _error(http.post(CHAT, json=chat_body("hi", big), headers=AUTH), 413, "too_large")
    assert "20,000" in err["message"] or "20000" in err["message"]


def test_a_body_over_the_limit_is_413_from_content_length(http: httpx.Client) -> None:
    body = json.dumps(chat_body("x" * 400_000)).encode()  # > 0.25 MB
    r = http.post(CHAT, content=body, headers={**AUTH, "content-type": "application/json"})
    _error(r, 413, "too_large")


def test_a_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 10_000  # no Content-Length: the cap counts the bytes as they come
        yield b'"}]}'

    r = http.post(CHAT, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    _error(r, 413, "too_large")


def test_unknown_route_is_a_json_404(http: httpx.Client) -> None:
    _error(http.get("/v1/nothing", headers=AUTH), 404)


@pytest.mark.parametrize("scheme", ["file", "path", "relative", "ftp"])
def test_file_and_path_images_are_refused_and_never_read(
    http: httpx.Client, tmp_path: Path, scheme: str
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(page_png())
    url = {
        "file": secret.as_uri(),
        "path": str(secret),
        "relative": "secret.png",
        "ftp": "ftp://127.0.0.1/secret.png",
    }[scheme]
    opened: list[str] = []
    watching = threading.Event()
    watching.set()

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if watching.is_set() and event == "open" and "secret.png" in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: ``watching`` switches this one off
    try:
        err = _error(http.post(CHAT, json=chat_body("hi", url), headers=AUTH), 400)
    finally:
        watching.clear()
    assert err["code"] == "invalid_image_url"
    assert opened == []


def test_http_images_are_refused_without_allow_urls(http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat_body("hi", "http://127.0.0.1:9/x.png"), headers=AUTH)
    err = _error(r, 400, "invalid_image_url")
    assert "--allow-urls" in err["message"]


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,@@@not-base64@@@", "data:image/png;base64,", "data:nocomma"],
)
def test_broken_data_urls_are_400(http: httpx.Client, url: str) -> None:
    _error(http.post(CHAT, json=chat_body("hi", url), headers=AUTH), 400)


def test_bytes_that_are_no_image_are_400(http: httpx.Client) -> None:
    url = data_url(b"just some text, not a picture", "image/png")
    err = _error(http.post(CHAT, json=chat_body("hi", url), headers=AUTH), 400)
    assert err["code"] == "unsupported"


def test_too_many_placeholders_is_400(http: httpx.Client) -> None:
    body = chat_body("<ImageHere><ImageHere> compare", data_url(page_png()))
    err = _error(http.post(CHAT, json=body, headers=AUTH), 400)
    assert "placeholder" in err["message"]


@pytest.mark.parametrize("kind", ["chat", "engine"])
def test_a_failing_model_is_500_and_the_server_lives_on(tiny: Any, kind: str) -> None:
    if kind == "chat":
        app = create_app(FailingModel(tiny), batch_size=1)
    else:
        backend = ProbeEngineBackend(tiny, n_slots=2, max_len=512, fail="simulated model failure")
        app = create_app(tiny, backend=backend)
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        err = _error(http.post(CHAT, json=chat_body("hi")), 500)
        assert err["type"] == "server_error"
        assert "simulated model failure" in err["message"]
        err = _error(http.post(CHAT, json=chat_body("hi", stream=True)), 500)
        assert err["type"] == "server_error"
        assert http.get("/health").json()["queue_depth"] == 0


@pytest.mark.parametrize("kind", ["chat", "engine"])
def test_a_full_queue_is_429_with_retry_after(tiny: Any, kind: str) -> None:
    if kind == "chat":
        held: Any = HeldModel(tiny)
        backend: Any = CountingBackend(held, max_queue=1)
        app = create_app(held, backend=backend)
    else:  # one slot, held in its first prefill
        held = backend = ProbeEngineBackend(tiny, n_slots=1, max_len=512, max_queue=1, hold=True)
        app = create_app(tiny, backend=backend)
    results: list[int] = []
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):

        def post() -> None:
            results.append(http.post(CHAT, json=chat_body("hi")).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert held.entered.wait(TIMEOUT)  # the first request is on the model
        assert backend.submitted.acquire(timeout=TIMEOUT)
        second = threading.Thread(target=post)
        second.start()
        assert backend.submitted.acquire(timeout=TIMEOUT)  # the second one waits in the queue
        assert http.get("/health").json()["queue_depth"] == 2
        r = http.post(CHAT, json=chat_body("hi"))
        err = _error(r, 429, "queue_full")
        assert err["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1
        held.release.set()
        first.join(TIMEOUT)
        second.join(TIMEOUT)
    assert results == [200, 200]


@pytest.mark.parametrize("kind", ["chat", "engine"])
def test_a_failure_mid_stream_ends_it_with_an_error_event(tiny: Any, kind: str) -> None:
    if kind == "chat":
        app = create_app(FailsAfterATokenModel(tiny), batch_size=1)
    else:
        backend = ProbeEngineBackend(tiny, n_slots=2, max_len=512, fail_after_token=True)
        app = create_app(tiny, backend=backend)
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        r = http.post(CHAT, json=chat_body("hi", stream=True))
    assert r.status_code == 200  # the stream had begun: the error travels inside it
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error"
    assert "failed after the first token" in err["message"]


def test_allow_urls_fetches_http_images_within_the_size_cap(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import http.server

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "page.png").write_bytes(page_png())
    (tmp_path / "big.png").write_bytes(page_png() + b"\0" * 300_000)  # over the 0.25 MB cap
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"
    app = create_app(tiny, allow_urls=True, max_body_mb=0.25, batch_size=2)
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            ok = http.post(CHAT, json=chat_body("hi", f"{base}/page.png"))
            big = http.post(CHAT, json=chat_body("hi", f"{base}/big.png"))
            missing = http.post(CHAT, json=chat_body("hi", f"{base}/nothing.png"))
    finally:
        files.shutdown()
        files.server_close()
    assert ok.status_code == 200, ok.text
    assert ok.json()["ixcdoc"]["grids"]  # the fetched page was read
    _error(big, 413, "too_large")
    _error(missing, 400, "unreadable")
