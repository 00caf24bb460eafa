"""``ixcdoc serve`` as a user runs it: a real process on 127.0.0.1, then stopped with Ctrl-C."""

from __future__ import annotations

import io
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ixcdoc.cli import app
from ixcdoc.errors import EXIT_USAGE
from tests.cli.helpers import subprocess_env
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


def test_serve_listens_answers_and_stops_on_ctrl_c(tiny_paths: dict[str, Path], tiny: Any) -> None:
    cmd = [sys.executable, "-m", "ixcdoc.cli", "serve", "--model", str(tiny_paths["normal"])]
    cmd += ["--device", "cpu", "--port", "0", "--api-key", "k1", "--model-name", "doc"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=subprocess_env()
    )
    try:
        lines = _lines(proc.stderr)
        seen = []
        while True:
            line = lines.get(timeout=TIMEOUT)
            assert line, f"the server exited: {''.join(seen)}"
            seen.append(line)
            if line.startswith("listening on "):
                break
        url = line.removeprefix("listening on ").strip()
        assert url.startswith("http://127.0.0.1:")
        png = page_png("CLI")
        want = tiny.chat(
            [Image.open(io.BytesIO(png)).convert("RGB")], "Hi?", hd=4, max_new_tokens=6
        )
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            assert http.get("/health").json()["model"] == "doc"
            r = http.post(
                "/v1/chat/completions",
                json=chat_body("Hi?", data_url(png), model="doc"),
                headers={"Authorization": "Bearer k1"},
            )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == want.text
        proc.send_signal(signal.SIGINT)
        proc.wait(TIMEOUT)
        assert proc.stdout is not None and proc.stdout.read() == b""  # stdout stays clean
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == 130  # the CLI's Ctrl-C status, as for every command


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
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "KV cache for 5000000 sequences" in lines[0]
    assert "listening" not in res.output


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
