"""Helpers for the server tests: a live uvicorn on 127.0.0.1, request bodies, model wrappers.

The wrappers delegate to a real tiny model; they only add a hold, a failure or a record so
that queueing, errors and cancellation can be checked deterministically.
"""

from __future__ import annotations

import base64
import contextlib
import io
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageDraw

from ixcdoc.serve import transport
from ixcdoc.serve.backend import Backend
from ixcdoc.serve.engine_backend import EngineBackend

TIMEOUT = 60.0  # seconds: every client call in these tests is bounded by this
HEADER_TIMEOUT_S = transport.HEADER_TIMEOUT_S


@contextlib.contextmanager
def live_server(app: Any, *, header_timeout: float = HEADER_TIMEOUT_S) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread, as ``ixcdoc serve`` runs it
    (``transport``: its protocol and shutdown); yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect at once; uvicorn accepts them when it is up
    config = transport.config(app, log_level="error", header_timeout=header_timeout)
    server = transport.Server(config, app.state.backend.close)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


class CliServer:
    """``ixcdoc serve`` in a child process on 127.0.0.1: its URL, its stderr lines, its memory."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        lines: queue.Queue[str],
        startup: list[str] | None = None,
    ) -> None:
        self.proc = proc
        self.url = url
        self.lines = lines
        self.startup = startup or []  # stderr's lines before ``listening on``, newlines cut

    def peak_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc: not Linux?")

    def stderr_after_start(self) -> list[str]:
        """stderr's lines after ``listening on ...``, once the process has exited."""
        out: list[str] = []
        while (line := self.lines.get(timeout=TIMEOUT)) != "":
            out.append(line)
        return out


def _lines(stream: Any) -> queue.Queue[str]:
    """The lines of a pipe, read on a thread so that waiting on them can time out; "" at EOF."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            out.put(raw.decode(errors="replace"))
        out.put("")

    threading.Thread(target=pump, daemon=True).start()
    return out


@contextlib.contextmanager
def cli_server(ckpt: Any, *args: str) -> Iterator[CliServer]:
    """``python -m ixcdoc.cli serve --model CKPT --device cpu --port 0 ARGS`` until it listens;
    killed at the end if the test has not stopped it."""
    from tests.cli.helpers import subprocess_env

    cmd = [sys.executable, "-m", "ixcdoc.cli", "serve", "--model", str(ckpt), "--device", "cpu"]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        # Ctrl-C as in a terminal, even when the suite runs where SIGINT is ignored (a
        # background job of a script): an ignored SIGINT is inherited, and uvicorn then shuts
        # down on it but exits 0.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = _lines(proc.stderr)
        seen: list[str] = []
        while not (line := lines.get(timeout=TIMEOUT)).startswith("listening on "):
            assert line, f"the server exited: {''.join(seen)}"
            seen.append(line)
        url = line.removeprefix("listening on ").strip()
        yield CliServer(proc, url, lines, [x.rstrip("\n") for x in [*seen, line]])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


def page_png(label: str = "Total: 42", size: tuple[int, int] = (120, 90)) -> bytes:
    """A white PNG of (width, height) with a line of black text."""
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((5, 5), label, fill="black")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` for bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user_message(text: str, *urls: str) -> dict[str, Any]:
    """An OpenAI user message: the text part, then one image_url part per URL."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": parts}


def chat_body(text: str, *urls: str, **fields: Any) -> dict[str, Any]:
    """A chat-completions body with one user message and a short generation at HD4."""
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [user_message(text, *urls)],
        "max_tokens": 6,
        "ixcdoc": {"hd": 4},
    }
    body.update(fields)
    return body


class Wrapped:
    """A real model with ``chat`` overridable; everything else is the model's."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class HeldModel(Wrapped):
    """Each chat waits at the start until ``release`` is set; ``entered`` says one is waiting.

    ``answers`` keeps what each chat returned, in order.
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.answers: list[Any] = []

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        if not self.release.wait(TIMEOUT):
            raise TimeoutError("the test never released the model")
        answer = self._model.chat(*args, **kwargs)
        self.answers.append(answer)
        return answer


class FailingModel(Wrapped):
    """Every chat raises, as a model that breaks on an input would."""

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated model failure")


class FailsAfterATokenModel(Wrapped):
    """Streams one real token, then fails: an error in the middle of a stream."""

    def chat(self, *args: Any, on_token: Any = None, **kwargs: Any) -> Any:
        def one_then_fail(tid: int) -> bool:
            if on_token is not None:
                on_token(tid)
            raise RuntimeError("failed after the first token")

        return self._model.chat(*args, on_token=one_then_fail, **kwargs)


class RecordingModel(Wrapped):
    """Keeps every Answer, keyed by the query, so the test can see how a generation ended."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.answers: dict[str, Any] = {}

    def chat(self, images: Any, query: str, **kwargs: Any) -> Any:
        answer = self._model.chat(images, query, **kwargs)
        self.answers[query] = answer
        return answer


class OverlapModel(Wrapped):
    """Counts how many chats run at the same moment (``most``): one model, one forward."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0
        self.calls = 0

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._now += 1
            self.calls += 1
            self.most = max(self.most, self._now)
        try:
            return self._model.chat(*args, **kwargs)
        finally:
            with self._lock:
                self._now -= 1


class CountingBackend(Backend):
    """A Backend that signals each submit, so a test knows when a request is queued."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.submitted = threading.Semaphore(0)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().submit(*args, **kwargs)
        self.submitted.release()
        return handle


class ProbeEngineBackend(EngineBackend):
    """An EngineBackend on a real engine, with probes through the engine's own hooks.

    ``hold``: each prefill waits until ``release`` is set (``entered`` says one is waiting).
    ``gather``: the first prefill waits until that many requests are in flight, so they
    overlap. ``fail``: every prefill raises RuntimeError(fail). ``fail_after_token``: a
    request's first streamed token is delivered, then its callback raises. ``answers`` keeps
    each Answer by query; ``rows`` the rows of every decode forward; ``submitted`` counts submits.
    """

    def __init__(
        self,
        model: Any,
        *,
        hold: bool = False,
        gather: int = 0,
        fail: str | None = None,
        fail_after_token: bool = False,
        **kwargs: Any,
    ) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.gather = gather
        self.fail = fail
        self.fail_after_token = fail_after_token
        self.answers: dict[str, Any] = {}
        self.rows: list[int] = []
        self.submitted = threading.Semaphore(0)
        super().__init__(model, fault_hook=self._before_prefill, **kwargs)

    def _before_prefill(self, request: Any) -> None:
        self.entered.set()
        if not self.release.wait(TIMEOUT):
            raise TimeoutError("the test never released the engine")
        if self.gather:
            with self._lock:
                if not self._lock.wait_for(lambda: self.running >= self.gather, TIMEOUT):
                    raise TimeoutError(f"{self.gather} requests never were in flight together")
            self.gather = 0  # once: later prefills must not wait for a crowd
        if self.fail is not None:
            raise RuntimeError(self.fail)

    def start(self) -> None:
        super().start()
        runner = self.engine.runner
        decode = runner.decode

        def counted(ids: Any, pos: Any) -> Any:
            self.rows.append(len(ids))
            return decode(ids, pos)

        runner.decode = counted

    def submit(self, request: Any, on_token: Any, on_done: Any, first_logits: Any = None) -> Any:
        def record(answer: Any, error: BaseException | None) -> None:
            if answer is not None:
                self.answers[request.query] = answer
            on_done(answer, error)

        def one_then_fail(tid: int) -> bool:
            on_token(tid)
            raise RuntimeError("failed after the first token")

        token = one_then_fail if self.fail_after_token else on_token
        handle = super().submit(request, token, record, first_logits)
        self.submitted.release()
        return handle
