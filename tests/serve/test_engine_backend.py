"""EngineBackend on a real tiny engine: the queue past the slots, withdrawal, shutdown, sizing."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app as cli_app
from ixcdoc.engine.request import ChatRequest
from ixcdoc.errors import EXIT_USAGE
from ixcdoc.serve import create_app
from ixcdoc.serve.backend import Backend, Cancelled, QueueFull
from ixcdoc.serve.engine_backend import EngineBackend, auto_slots
from tests.serve.helpers import (
    TIMEOUT,
    ProbeEngineBackend,
    chat_body,
    data_url,
    live_server,
    page_png,
)

CHAT = "/v1/chat/completions"


class Outcome:
    """One job's on_done, waitable."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Any = None
        self.error: BaseException | None = None
        self.calls = 0

    def __call__(self, answer: Any, error: BaseException | None) -> None:
        self.answer, self.error = answer, error
        self.calls += 1
        self.done.set()


def _request(query: str, max_new: int = 4) -> ChatRequest:
    return ChatRequest([], query, hd=4, meta_instruction="", max_new_tokens=max_new)


def _keep(_: int) -> bool:
    return True


def test_jobs_past_the_slots_wait_and_a_cancelled_one_leaves_at_once(tiny: Any) -> None:
    backend = ProbeEngineBackend(tiny, n_slots=1, max_len=256, max_queue=2, hold=True)
    backend.start()
    try:
        first, second, third = Outcome(), Outcome(), Outcome()
        backend.submit(_request("one"), _keep, first)
        assert backend.entered.wait(TIMEOUT)  # on the engine, held in its prefill
        t2 = backend.submit(_request("two"), _keep, second)
        backend.submit(_request("three"), _keep, third)
        assert (backend.running, backend.queued, backend.depth) == (1, 2, 3)
        with pytest.raises(QueueFull) as full:
            backend.submit(_request("four"), _keep, Outcome())
        assert full.value.queued == 2
        assert full.value.retry_after >= 1
        t2.cancel()  # withdrawn without waiting for a slot
        assert second.done.is_set()
        assert isinstance(second.error, Cancelled)
        assert backend.queued == 1
        backend.release.set()
        assert first.done.wait(TIMEOUT) and third.done.wait(TIMEOUT)
    finally:
        backend.close()
    assert first.error is None and third.error is None
    assert "two" not in backend.answers  # the withdrawn job never reached the engine
    want = tiny.chat([], "three", hd=4, meta_instruction="", max_new_tokens=4)
    assert third.answer.token_ids == want.token_ids
    assert (first.calls, second.calls, third.calls) == (1, 1, 1)
    assert backend.depth == 0


def test_close_cancels_waiting_and_running_jobs_once_each(looping: Any) -> None:
    backend = ProbeEngineBackend(looping, n_slots=1, max_len=4200, hold=True)
    backend.start()
    running, waiting = Outcome(), Outcome()
    backend.submit(_request("runs", max_new=4000), _keep, running)
    assert backend.entered.wait(TIMEOUT)
    backend.submit(_request("waits"), _keep, waiting)
    backend.release.set()
    backend.close(timeout=TIMEOUT)
    assert running.done.is_set() and waiting.done.is_set()
    assert isinstance(waiting.error, Cancelled)
    assert str(waiting.error) == "the server is shutting down: the request was not run"
    # the running job stopped at its next token instead of generating 4000, and says so (its
    # client gets a 503, not a cut answer that looks complete)
    assert running.answer is None and isinstance(running.error, Cancelled)
    assert "the server is shutting down: the request was stopped after" in str(running.error)
    assert len(backend.rows) < 4000  # decode forwards run
    assert (running.calls, waiting.calls) == (1, 1)
    assert backend.engine is None
    assert looping.model.model.layers[0].attention.kv_cache is None  # its cache went with it


def test_auto_slots_on_the_cpu_fill_half_the_available_ram(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ixcdoc.sizing

    cfg = tiny.config
    # float32 K and V for every layer, written out from the config's shapes
    per_position = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    positions = 1000
    monkeypatch.setattr(ixcdoc.sizing, "available_ram", lambda: 2 * 5 * positions * per_position)
    assert auto_slots(tiny, positions) == 5
    monkeypatch.setattr(ixcdoc.sizing, "available_ram", lambda: 0)
    assert auto_slots(tiny, positions) == 1  # never 0: one slot at least
    monkeypatch.setattr(ixcdoc.sizing, "available_ram", lambda: 2**50)
    assert auto_slots(tiny, positions) == 64  # the CPU cap


def test_batch_size_chooses_the_backend_and_health_reports_it(tiny: Any) -> None:
    one = create_app(tiny, batch_size=1)
    assert type(one.state.backend) is Backend
    many = create_app(tiny, batch_size=3, max_tokens=16)
    assert type(many.state.backend) is EngineBackend
    assert many.state.backend.max_len == tiny.config.max_length + 16
    with live_server(many) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        health = http.get("/health").json()
    assert health["batch_size"] == 3
    assert (health["running"], health["queued"], health["queue_depth"]) == (0, 0, 0)


def test_max_tokens_over_the_limit_is_400_and_the_default_fits_under_it(tiny: Any) -> None:
    png = page_png("limit")
    page = Image.open(io.BytesIO(png)).convert("RGB")
    with (
        live_server(create_app(tiny, batch_size=2, max_tokens=8)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):
        over = http.post(CHAT, json=chat_body("Too long?", data_url(png), max_tokens=9))
        body = chat_body("Default length?", data_url(png))
        del body["max_tokens"]
        default = http.post(CHAT, json=body)
    assert over.status_code == 400
    assert over.json()["error"]["param"] == "max_tokens"
    assert "8" in over.json()["error"]["message"]
    assert default.status_code == 200, default.text
    want = tiny.chat([page], "Default length?", hd=4, max_new_tokens=8)
    assert default.json()["choices"][0]["message"]["content"] == want.text


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_batch_size_is_a_usage_error(value: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli_app, ["serve", "--batch-size", value, "--model", str(tmp_path / "none")]
    )
    assert res.exit_code == EXIT_USAGE
    assert "--batch-size" in res.stderr
    assert "Traceback" not in res.output


@pytest.mark.parametrize(("args", "want"), [([], None), (["--batch-size", "1"], 1)])
def test_the_cli_passes_batch_size_and_max_tokens_to_the_server(
    args: list[str], want: int | None, tiny_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ixcdoc.serve.server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(ixcdoc.serve.server, "serve", lambda model, **kw: seen.update(kw))
    cmd = ["serve", "--model", str(tiny_paths["normal"]), "--device", "cpu", "--max-tokens", "64"]
    res = CliRunner().invoke(cli_app, cmd + args)
    assert res.exit_code == 0, res.output
    assert seen["batch_size"] == want
    assert seen["max_tokens"] == 64


def test_seeded_sampling_on_the_engine_equals_chat(tiny: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    png = page_png("sampled")
    page = Image.open(io.BytesIO(png)).convert("RGB")
    seeds = [3, 11]
    want = {
        s: tiny.chat(
            [page], "Sample it.", hd=4, max_new_tokens=6, do_sample=True, temperature=0.7, seed=s
        ).text
        for s in seeds
    }
    with (
        live_server(create_app(tiny, batch_size=2, max_tokens=16)) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as http,
    ):

        def ask(seed: int) -> str:
            body = chat_body("Sample it.", data_url(png), temperature=0.7, seed=seed)
            r = http.post(CHAT, json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(2) as pool:
            got = dict(zip(seeds, pool.map(ask, seeds), strict=True))
    assert got == want
