"""The command line as a Unix citizen: help, version, import cost, usage errors and exit 2.

Usage errors are checked through the console entry point (``python -m ixcdoc.cli`` runs
``main()``), which turns them into exactly one red line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest

from ixcdoc.errors import EXIT_USAGE
from tests.cli.helpers import IXCDOC, Invoke, subprocess_env, text_png

COMMANDS = (
    "plan",
    "tiers",
    "ask",
    "extract",
    "chart",
    "eval",
    "merge",
    "serve",
    "view",
    "doctor",
    "download",
)


def run(args: list[str], cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IXCDOC, *args],
        cwd=cwd,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=subprocess_env(),
        timeout=120,
    )


def test_help_lists_every_command(invoke: Invoke) -> None:
    res = invoke(["--help"])
    assert res.exit_code == 0
    listed = res.stdout.split("Commands:", 1)[1].split("Examples:", 1)[0]
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    assert names == list(COMMANDS)
    assert res.stderr == ""


def test_version_is_the_installed_distribution(invoke: Invoke) -> None:
    res = invoke(["--version"])
    assert res.exit_code == 0
    assert res.stdout == f"ixcdoc {importlib.metadata.version('ixcdoc')}\n"


def test_importing_the_cli_and_help_do_not_import_torch(tmp_path: Path) -> None:
    probe = (
        "import sys, json\n"
        "import ixcdoc.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(ixcdoc.cli.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = ('torch', 'pymupdf', 'fitz', 'transformers', 'sentencepiece')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    proc = subprocess.run(
        [IXCDOC[0], "-c", probe], cwd=tmp_path, capture_output=True, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == []


def test_no_arguments_shows_help_and_exits_2(tmp_path: Path) -> None:
    proc = run([], tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == b""
    assert b"Commands:" in proc.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["plan"], "Missing argument"),
        (["plan", "page.png", "--hd", "0"], "--hd"),
        (["plan", "page.png", "--hd", "big"], "--hd"),
        (["plan", "page.png", "--pages", "3-1"], "3-1"),
        (["plan", "page.png", "--pages", "x"], "--pages"),
        (["plan", "page.png", "--pages", "0"], "--pages"),
        (["extract", "page.png", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["extract", "page.png", "--quant", "8bit"], "--quant"),
        (["extract", "page.png", "--speculate", "on"], "--speculate"),
        (["ask", "page.png", "what?", "--speculate", "yes"], "use auto or off, got 'yes'"),
        (["extract", "page.png", "--redo-failed"], "--redo-failed needs -o"),
        (["tiers", "--aspect", "wide"], "--aspect"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    text_png(tmp_path / "page.png", "usage")
    proc = run(args, tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr.decode()
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert words in lines[0]
    assert "Traceback" not in lines[0]


def test_ask_without_question_and_empty_stdin_is_a_usage_error(tmp_path: Path) -> None:
    text_png(tmp_path / "page.png", "no question")
    proc = run(["ask", "page.png"], tmp_path, stdin=b"")
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "question" in lines[0]


def test_ask_stdin_document_needs_the_question_as_argument(tmp_path: Path) -> None:
    """With ``-`` the bytes on stdin are the document, so they cannot also be the question."""
    proc = run(["ask", "-"], tmp_path, stdin=(tmp_path / "x").as_posix().encode())
    assert proc.returncode == EXIT_USAGE
    assert len(proc.stderr.decode().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (
            [b"ask", b"page.png", b"what \xff is it?"],
            b"",
            "the question is not valid UTF-8: byte 0xff",
        ),
        ([b"ask", b"page.png"], b"what \xff is it?", "the question on stdin is not valid UTF-8"),
        ([b"extract", b"page.png", b"--prompt", b"read \xc3 it"], b"", "the prompt is not valid"),
        ([b"chart", b"page.png", b"--prompt", b"\xfe"], b"", "the prompt is not valid UTF-8"),
    ],
)
def test_text_that_is_not_utf8_is_one_usage_line(
    tmp_path: Path, args: list[bytes], stdin: bytes, says: str
) -> None:
    """A byte that is not UTF-8 in the question (argument or stdin) or in --prompt: exit 2 and
    one line, before any model loads (no --model here: none is needed to refuse it)."""
    text_png(tmp_path / "page.png", "bytes")
    proc = run(args, tmp_path, stdin=stdin)  # type: ignore[arg-type]  # bytes reach argv as is
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE, err
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1
