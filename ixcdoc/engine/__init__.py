"""The batched engine: many pages in flight on one model (continuous batching, beam search).

``ChatRequest`` is importable without torch; ``Engine`` imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ixcdoc.engine.request import ChatRequest

if TYPE_CHECKING:
    from ixcdoc.engine.engine import Engine
    from ixcdoc.engine.sequence import Handle


def __getattr__(name: str) -> Any:
    if name in ("Engine", "Handle"):
        from ixcdoc.engine import engine, sequence

        return engine.Engine if name == "Engine" else sequence.Handle
    raise AttributeError(name)


__all__ = ["ChatRequest", "Engine", "Handle"]
