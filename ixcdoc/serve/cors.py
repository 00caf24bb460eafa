"""``--cors-origin``: which browser pages of other origins may call the API (none by default).

A browser-side client (Open WebUI, a chat page) first sends a preflight ``OPTIONS`` without the
key; it is answered here, in front of ``guard.Guard``, for the origins named and no others.
Every real request still needs the key.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

from ixcdoc.errors import UsageError

PREFLIGHT_MAX_AGE_S = 600


def check_origin(origin: str) -> str:
    """An origin as browsers send it (``scheme://host[:port]``, no path), or "*" for any;
    UsageError otherwise."""
    if origin == "*":
        return origin
    u = urllib.parse.urlsplit(origin)
    if u.scheme not in ("http", "https") or not u.netloc or u.path or u.query or u.fragment:
        raise UsageError(
            f"--cors-origin {origin!r}: give an origin as the browser sends it, e.g. "
            "http://localhost:3000 (scheme, host and port; no path or trailing slash)"
        )
    return origin


def add_cors(app: Any, origins: Sequence[str]) -> None:
    """Answer CORS for ``origins`` (nothing when empty); add this after ``Guard`` so that it
    runs first."""
    if not origins:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=[check_origin(o) for o in origins],
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
        max_age=PREFLIGHT_MAX_AGE_S,
    )
