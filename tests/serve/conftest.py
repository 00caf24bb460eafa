"""Fixtures for the server tests: tiny real models, and servers on 127.0.0.1 in this process."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaces the suite's network block: loopback is allowed (the server), nothing else."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    real_connect = socket.socket.connect
    real_create = socket.create_connection

    def loopback_only(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"network access is blocked in tests ({address!r})")

    def connect(self: socket.socket, address: Any) -> Any:
        loopback_only(address)
        return real_connect(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        loopback_only(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints in the official layout: seed 0, and one that loops forever. Both in a
    folder named "tiny": the name the server gives the model, which requests must use."""
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve-ckpts")
    return {
        "normal": write_tiny_checkpoint(root / "normal" / "tiny"),
        "loop": write_tiny_checkpoint(root / "loop" / "tiny", loop=True),
    }


@pytest.fixture(scope="session")
def tiny(tiny_paths: dict[str, Path]) -> Any:
    """The seed-0 tiny model loaded on the CPU through ``ixcdoc.load``."""
    import ixcdoc

    return ixcdoc.load(tiny_paths["normal"], device="cpu")


@pytest.fixture(scope="session")
def twin(tiny_paths: dict[str, Path]) -> Any:
    """A second load of the seed-0 checkpoint, with a KV cache of its own: the library's
    answer while a server's engine owns ``tiny``'s cache (``chat`` is refused meanwhile), and
    the model of a server that runs beside the servers of other tests."""
    import ixcdoc

    return ixcdoc.load(tiny_paths["normal"], device="cpu")


@pytest.fixture(scope="session")
def looping(tiny_paths: dict[str, Path]) -> Any:
    """A tiny model whose greedy output never reaches a stop token."""
    import ixcdoc

    return ixcdoc.load(tiny_paths["loop"], device="cpu")
