"""ixcdoc: read documents with InternLM-XComposer2-4KHD on your own GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ixcdoc.engine.request import ChatRequest
    from ixcdoc.runtime import DocModel


def load(*args: Any, **kwargs: Any) -> DocModel:
    """Load the model once; see ``ixcdoc.runtime.load`` (imports torch on first use)."""
    from ixcdoc.runtime import load as _load

    return _load(*args, **kwargs)


def __getattr__(name: str) -> Any:
    # ChatRequest on first use: ``import ixcdoc`` stays light (no torch, no prompt code)
    if name == "ChatRequest":
        from ixcdoc.engine.request import ChatRequest

        return ChatRequest
    raise AttributeError(f"module 'ixcdoc' has no attribute {name!r}")


__all__ = ["ChatRequest", "__version__", "load"]
