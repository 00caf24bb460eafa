"""The batched engine: many pages in flight on one model (continuous batching, beam search).

``ChatRequest`` is importable without torch; ``Engine`` imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ixcdoc.engine.request import ChatRequest

if TYPE_CHECKING:
    from ixcdoc.engine.engine import Engine
    from ixcdoc.engine.prompts import Loaded
    from ixcdoc.engine.sequence import Handle

_LAZY = {
    "Engine": "ixcdoc.engine.engine",
    "Handle": "ixcdoc.engine.sequence",
    "Loaded": "ixcdoc.engine.prompts",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = ["ChatRequest", "Engine", "Handle", "Loaded"]
