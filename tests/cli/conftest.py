"""Fixtures for the CLI tests: tiny real checkpoints on disk and an in-process CLI runner."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from typer.testing import CliRunner, Result

from ixcdoc.cli import app
from tests.cli.helpers import Checkpoints, Invoke


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    return Checkpoints(
        normal=write_tiny_checkpoint(root / "normal"),
        loop=write_tiny_checkpoint(root / "loop", loop=True),
    )


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """invoke(args, input=None) -> Result: the Typer app in-process, stdout and stderr apart."""
    monkeypatch.delenv("IXCDOC_MODEL", raising=False)

    def run(args: Sequence[str], input: bytes | str | None = None) -> Result:
        return CliRunner().invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run
