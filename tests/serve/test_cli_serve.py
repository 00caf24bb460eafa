"""``ixcdoc serve`` as a user runs it: a real process on 127.0.0.1, then stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app
from ixcdoc.errors import EXIT_USAGE
from tests.cli.helpers import IXCDOC, subprocess_env
from tests.serve.helpers import TIMEOUT, chat_body, data_url, page_png


def _lines(stream: Any) -> queue.Queue[str]:
    """The lines of a pipe, read on a thread so that waiting on them can time out."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            out.put(raw.decode(errors="replace"))
        out.put("")

    threading.Thread(target=pump, daemon=True).start()
    return out


@contextlib.contextmanager
def started(ckpt: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``ixcdoc serve --model ckpt --device cpu --port 0 ARGS`` as a process: yields it once it
    says ``listening on``, with the stderr lines up to that one; killed if the test fails."""
    cmd = [*IXCDOC, "serve", "--model", str(ckpt), "--device", "cpu", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=subprocess_env(),
        # Ctrl-C as in a terminal, even when the suite runs where SIGINT is ignored (a
        # background job of a script): an ignored SIGINT is inherited, and uvicorn then shuts
        # down on it but exits 0.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = _lines(proc.stderr)
        seen: list[str] = []
        while not seen or not seen[-1].startswith("listening on "):
            line = lines.get(timeout=TIMEOUT)
            assert line, f"the server exited: {''.join(seen)}"
            seen.append(line)
        yield proc, [line.rstrip("\n") for line in seen]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def test_serve_listens_answers_and_stops_on_ctrl_c(tiny_paths: dict[str, Path], tiny: Any) -> None:
    args = ["--api-key", "k1", "--model-name", "doc"]
    with started(tiny_paths["normal"], *args) as (proc, seen):
        url = seen[-1].removeprefix("listening on ").strip()
        assert url.startswith("http://127.0.0.1:")
        png = page_png("CLI")
        want = tiny.chat(
            [Image.open(io.BytesIO(png)).convert("RGB")], "Hi?", hd=4, max_new_tokens=6
        )
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            assert http.get("/health").json()["model"] == "doc"
            r = http.post(
                "/v1/chat/completions",
                json=chat_body("Hi?", data_url(png)),
                headers={"Authorization": "Bearer k1"},
            )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want.text
        proc.send_signal(signal.SIGINT)
        proc.wait(TIMEOUT)
        assert proc.stdout is not None and proc.stdout.read() == b""  # stdout stays clean
    assert proc.returncode == 130  # the CLI's Ctrl-C status, as for every command


def test_serve_says_what_it_does_while_it_starts(tiny_paths: dict[str, Path]) -> None:
    """Off a terminal, one line per start-up step, in order, before ``listening on``: the
    weights, then the KV cache with its slots, positions and size."""
    ckpt = tiny_paths["normal"]
    with started(ckpt, "--batch-size", "2", "--max-tokens", "8") as (_, seen):
        pass
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
    with started(tiny_paths["normal"], "--batch-size", "2", "--quiet") as (_, seen):
        pass
    (listening,) = seen
    assert listening.startswith("listening on http://127.0.0.1:")


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
    from ixcdoc.serve.run import serve

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
