"""Run a command in a real terminal (a tmux pane of a given size) and read back its screen.

::

    screen = run_in_terminal([*IXCDOC, "plan", "samples"], width=80, env=env, cwd=root)
    assert screen.exit_code == 0
    assert all(len(line) <= 80 for line in screen.lines)

The command runs on a pseudo-terminal, so ``isatty()`` is true and it sees the pane's width,
as it would for a person. Each call starts its own tmux server (its own socket, no user
config) and kills it afterwards. After the command a shell prints a unique end marker with
the exit code on the same terminal; the screen is read once the marker is drawn, so
everything the command wrote is on it. Waiting is bounded by ``timeout``.

Use ``needs_tmux`` on tests that call it: they skip, with the reason, where tmux is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (real-terminal test)")

# Wraps the command: its output, then the marker and exit code on a line of their own, then a
# signal on the tmux channel named by the marker (``wait-for``: no polling); then the pane
# stays open (a pane that closes takes its screen with it) until the server is killed. $1 is
# the tmux program (the pane's tmux finds its own server through $TMUX).
_WRAPPER = (
    'tmux="$1"; shift; "$@"; rc=$?; printf "\\n%s %d\\n" "$0" "$rc"; '
    '"$tmux" wait-for -S "$0"; exec cat >/dev/null'
)
# Screen reads after the signal before the marker must be drawn: the pane's output was written
# before the signal, so the server has it; each read is a round trip through the server's loop.
_READS_AFTER_SIGNAL = 200


@dataclass(frozen=True)
class Screen:
    """What a command left on the terminal, and how it exited."""

    lines: list[str]  # screen and scrollback, wrapped lines joined back, trailing blanks cut
    exit_code: int


def run_in_terminal(
    argv: Sequence[str | os.PathLike[str]],
    *,
    width: int,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    height: int = 200,
    timeout: float = 60.0,
) -> Screen:
    """Run ``argv`` in a ``width`` x ``height`` tmux pane until it exits; its screen and code.

    ``env`` (default: this process's) is the command's whole environment, less COLUMNS and
    LINES so that the pane's size is the only one it sees. Lines a command wrote longer than
    ``width`` come back whole (``capture-pane -J``), so their length shows. Raises
    ``TimeoutError`` with the screen so far if the command has not ended after ``timeout``
    seconds.
    """
    if TMUX is None:
        raise RuntimeError("tmux is not installed")
    env = dict(os.environ if env is None else env)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env.pop("TMUX", None)  # not a client of some outer tmux
    token = uuid.uuid4().hex[:12]
    marker = f"__ixcdoc_terminal_done_{token}"
    home = tempfile.mkdtemp(prefix="ixcdoc-tmux-")  # the server's socket, removed after
    tmux = [TMUX, "-S", os.path.join(home, "s"), "-f", os.devnull]
    # One string for the pane's shell, so that tmux itself never parses the command's words
    # (an argument ";" would end a tmux command).
    command = shlex.join(["sh", "-c", _WRAPPER, marker, TMUX, *(str(a) for a in argv)])
    try:
        return _run(tmux, command, width, height, cwd, env, timeout, marker)
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def _run(
    tmux: list[str],
    command: str,
    width: int,
    height: int,
    cwd: str | os.PathLike[str] | None,
    env: dict[str, str],
    timeout: float,
    marker: str,
) -> Screen:
    session = "main"
    subprocess.run(
        [
            *tmux,
            "start-server",
            ";",  # history-limit applies to panes made after it: set it before the session
            "set-option",
            "-g",
            "history-limit",
            "100000",
            ";",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(Path(cwd or os.getcwd()).resolve()),
            command,
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    done = re.compile(rf"^{marker} (\d+)$")

    def screen() -> list[str]:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", session],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout.splitlines()

    try:  # blocks until the wrapper signals the marker's channel
        subprocess.run([*tmux, "wait-for", marker], env=env, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        shown = "\n".join(screen()).rstrip()
        raise TimeoutError(f"{command} did not end in {timeout} s; screen:\n{shown}") from None
    for _ in range(_READS_AFTER_SIGNAL):
        lines = screen()
        ends = [k for k, line in enumerate(lines) if done.match(line.rstrip())]
        if ends:
            break
    else:
        raise AssertionError(f"the end marker was signalled but not drawn:\n{chr(10).join(lines)}")
    end = ends[-1]
    code = int(done.match(lines[end].rstrip()).group(1))  # type: ignore[union-attr]
    out = lines[:end]
    if out and out[-1] == "":  # the blank line the marker's leading newline made
        out.pop()
    while out and not out[-1].strip():
        out.pop()
    return Screen(out, code)
