"""Fixtures for the evaluation tests: tiny checkpoints (one steered to a known answer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ixcdoc.cli import app


@dataclass(frozen=True)
class EvalCkpts:
    """``normal``: arbitrary greedy text; ``steered``: every greedy step picks ``token``."""

    normal: Path
    steered: Path
    token: int


def _plain_token(ckpt: Path) -> int:
    """An ordinary (non-special) token id whose text is printable and has no '#'."""
    from ixcdoc.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(ckpt)
    for tid in range(100, 1000):
        text = tok.decode([tid])
        if not tok.is_special(tid) and text.strip().isalnum() and text.strip().isascii():
            return tid
    raise AssertionError("no plain token in the tiny vocabulary")


@pytest.fixture(scope="session")
def eval_ckpts(tmp_path_factory: pytest.TempPathFactory) -> EvalCkpts:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("eval_ckpts")
    normal = write_tiny_checkpoint(root / "normal")
    token = _plain_token(normal)
    steered = write_tiny_checkpoint(root / "steered", bias_token=token)
    return EvalCkpts(normal=normal, steered=steered, token=token)


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """invoke(args) -> Result: the Typer app in-process, stdout and stderr apart."""
    monkeypatch.delenv("IXCDOC_MODEL", raising=False)

    def run(args: Sequence[object], input: str | None = None) -> Result:
        return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run
