"""Shared test set-up: no network, no hub, deterministic torch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
UPSTREAM = FIXTURES / "upstream"
_CONNECT, _CREATE_CONNECTION = socket.socket.connect, socket.create_connection  # before any block


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block the network and the hub for every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def guard(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network access is blocked in tests")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relax the network block for one test: 127.0.0.1 and ::1 only (a local port)."""
    real_connect, real_create = _CONNECT, _CREATE_CONNECTION

    def local_only(address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"network access is blocked in tests ({address!r})")

    def connect(self: socket.socket, address: object) -> object:
        local_only(address)
        return real_connect(self, address)

    def create_connection(address: object, *args: object, **kwargs: object) -> socket.socket:
        local_only(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
