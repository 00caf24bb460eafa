"""``ixcdoc serve``: an OpenAI-compatible HTTP server over one loaded model (docs/serve.md).

Needs the ``serve`` extra (FastAPI and uvicorn): ``pip install 'ixcdoc[serve]'``.

    >>> from ixcdoc.serve import create_app, serve
    >>> serve(ixcdoc.load(), port=8000)                  # blocks; Ctrl-C stops it

``create_app(model, ...)`` gives the FastAPI app for embedding. Requests meet the model in a
backend: ``EngineBackend`` (the default: requests decoded together on the batched engine) or
``Backend`` (``batch_size=1``: one ``chat`` at a time on a worker thread), both
``backend.ServeBackend``; a request is the engine's ``ChatRequest``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ixcdoc.serve.app import create_app
    from ixcdoc.serve.backend import Backend, QueueFull
    from ixcdoc.serve.engine_backend import EngineBackend
    from ixcdoc.serve.server import serve

_WHERE = {
    "create_app": "ixcdoc.serve.app",
    "serve": "ixcdoc.serve.server",
    "Backend": "ixcdoc.serve.backend",
    "EngineBackend": "ixcdoc.serve.engine_backend",
    "QueueFull": "ixcdoc.serve.backend",
}

__all__ = ["Backend", "EngineBackend", "QueueFull", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    import importlib

    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ixcdoc.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
