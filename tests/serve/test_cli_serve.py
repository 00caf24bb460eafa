"""``ixcdoc serve`` as a user runs it: a real process on 127.0.0.1, then stopped with Ctrl-C."""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app
from ixcdoc.errors import EXIT_USAGE
from tests.serve.helpers import TIMEOUT, chat_body, cli_server, data_url, page_png


def test_serve_listens_answers_and_stops_on_ctrl_c(tiny_paths: dict[str, Path], tiny: Any) -> None:
    args = ["--api-key", "k1", "--model-name", "doc"]
    with cli_server(tiny_paths["normal"], *args) as server:
        assert server.url.startswith("http://127.0.0.1:")
        png = page_png("CLI")
        want = tiny.chat(
            [Image.open(io.BytesIO(png)).convert("RGB")], "Hi?", hd=4, max_new_tokens=6
        )
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            assert http.get("/health").json()["model"] == "doc"
            r = http.post(
                "/v1/chat/completions",
                json=chat_body("Hi?", data_url(png), model="doc"),
                headers={"Authorization": "Bearer k1"},
            )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want.text
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(TIMEOUT)
        assert server.proc.stdout is not None and server.proc.stdout.read() == b""  # clean
        assert server.stderr_after_start() == ["interrupted\n"]
    assert server.proc.returncode == 130  # the CLI's Ctrl-C status, as for every command


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_binding_beyond_loopback_needs_a_key(
    host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IXCDOC_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["serve", "--host", host, "--model", str(tmp_path / "none")])
    assert res.exit_code == EXIT_USAGE
    assert "--api-key" in res.stderr
    assert "Traceback" not in res.output


def test_without_the_extra_one_line_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    res = CliRunner().invoke(app, ["serve"])
    assert res.exit_code == 1
    assert res.stderr.strip() == "ixcdoc serve needs: pip install 'ixcdoc[serve]'"


def test_a_batch_size_no_memory_holds_is_one_line_before_listening(
    tiny_paths: dict[str, Path],
) -> None:
    """The engine's KV cache is allocated before the socket is bound: a --batch-size whose cache
    cannot fit is a one-line error (exit 1), never a server that announces itself and then
    fails its start-up with a traceback."""
    from ixcdoc.errors import EXIT_FATAL

    args = ["serve", "--model", str(tiny_paths["normal"]), "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--port", "0", "--batch-size", "5000000"])
    assert res.exit_code == EXIT_FATAL
    *progress, error = res.stderr.splitlines()  # the start-up lines, then the error alone
    assert error.startswith("error: ") and "KV cache for 5000000 sequences" in error
    assert progress[-1].startswith("allocating the KV cache: 5000000 slots × ")
    assert "listening" not in res.output
    quiet = CliRunner().invoke(app, [*args, "--port", "0", "--batch-size", "5000000", "-q"])
    assert quiet.exit_code == EXIT_FATAL
    (alone,) = quiet.stderr.splitlines()  # no start-up lines: the error only
    assert alone.startswith("error: ") and "KV cache for 5000000 sequences" in alone


def test_a_port_in_use_or_an_unknown_host_is_one_line_and_allocates_nothing(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address is resolved and bound before the engine's cache is allocated: a server that
    cannot listen takes no memory, and says why in one line (exit 2 through the CLI)."""
    import socket

    from ixcdoc.errors import UsageError
    from ixcdoc.serve.server import serve

    tiny.model.reset_caches()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(tiny, host="127.0.0.1", port=port, batch_size=4)
    finally:
        taken.close()
    assert tiny.model.model.layers[0].attention.kv_cache is None

    def no_such_host(*a: Any, **k: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(UsageError, match="Name or service not known"):
        serve(tiny, host="localhost", port=0, batch_size=4)
    assert tiny.model.model.layers[0].attention.kv_cache is None


def _in_flight(http: httpx.Client, running: int, queued: int) -> None:
    """Wait until /health shows these counts (asked again and again, bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while (h := http.get("/health").json())["running"] != running or h["queued"] != queued:
        assert time.monotonic() < deadline, f"never {running} running and {queued} queued: {h}"


@pytest.mark.parametrize(
    ("sig", "batch", "line", "status"),
    [(signal.SIGINT, 2, "interrupted", 130), (signal.SIGTERM, 1, "terminated", 143)],
)
def test_stopping_answers_the_requests_in_flight_as_the_docs_say(
    tiny_paths: dict[str, Path], sig: int, batch: int, line: str, status: int
) -> None:
    """Ctrl-C or SIGTERM while a stream decodes (the looping model never stops) and a plain
    request decodes beside it (the engine) or waits behind it (--batch-size 1): the plain one
    gets a 503 in OpenAI's shape, the stream an error event and then [DONE], and stderr one
    line, no traceback; the exit status is 128 + the signal. They got a bare 500 and a cut
    stream, 5 s later, with a traceback each."""
    import json
    import threading

    results: dict[str, Any] = {}
    with cli_server(tiny_paths["loop"], "--batch-size", str(batch)) as server:
        plain = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        streaming = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        probe = httpx.Client(base_url=server.url, timeout=TIMEOUT)
        body = chat_body("Never ends.", max_tokens=20_000)
        post = threading.Thread(
            target=lambda: results.update(plain=plain.post("/v1/chat/completions", json=body))
        )
        with streaming.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            events = r.iter_lines()
            assert next(e for e in events if e.startswith("data: ") and '"content"' in e)
            post.start()
            _in_flight(probe, running=min(batch, 2), queued=2 - min(batch, 2))
            server.proc.send_signal(sig)
            rest = [e[6:] for e in events if e.startswith("data: ")]
        post.join(TIMEOUT)
        for c in (plain, streaming, probe):
            c.close()
        server.proc.wait(TIMEOUT)
        stderr = server.stderr_after_start()
    r = results["plain"]
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == "shutting_down" and err["type"] == "server_error"
    plain_end = "stopped after" if batch == 2 else "not run"
    assert f"the server is shutting down: the request was {plain_end}" in err["message"]
    assert rest[-1] == "[DONE]"
    streamed = json.loads(rest[-2])["error"]
    assert streamed["code"] == "shutting_down" and "was stopped after" in streamed["message"]
    assert stderr == [f"{line}\n"]
    assert server.proc.returncode == status


def test_serve_says_what_it_does_while_it_starts(tiny_paths: dict[str, Path]) -> None:
    """Off a terminal, one line per start-up step, in order, before ``listening on``: the
    weights, then the KV cache with its slots, positions and size."""
    ckpt = tiny_paths["normal"]
    with cli_server(ckpt, "--batch-size", "2", "--max-tokens", "8") as server:
        seen = server.startup
    loading, loaded, cache, listening = seen
    assert loading == f"loading {ckpt} (auto, cpu)"
    assert re.fullmatch(r"loaded in \d+\.\d s: fp32 on cpu", loaded), loaded
    # a slot holds the longest prompt (max_length) and --max-tokens; float32 K and V per layer
    cfg = json.loads((ckpt / "config.json").read_text())
    positions = cfg["max_length"] + 8
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    per_position = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head_dim * 4
    mib = 2 * positions * per_position / 2**20
    assert cache == f"allocating the KV cache: 2 slots × {positions:,} positions, {mib:.1f} MiB"
    assert listening.startswith("listening on http://127.0.0.1:")


def test_serve_quiet_says_only_where_it_listens(tiny_paths: dict[str, Path]) -> None:
    with cli_server(tiny_paths["normal"], "--batch-size", "2", "--quiet") as server:
        seen = server.startup
    (listening,) = seen
    assert listening.startswith("listening on http://127.0.0.1:")
