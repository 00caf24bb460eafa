"""ixcdoc: read documents with InternLM-XComposer2-4KHD on your own GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ixcdoc.runtime import DocModel


def load(*args: Any, **kwargs: Any) -> DocModel:
    """Load the model once; see ``ixcdoc.runtime.load`` (imports torch on first use)."""
    from ixcdoc.runtime import load as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load"]
