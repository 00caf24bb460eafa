"""Image URLs from a request to pages, through the same input code as the CLI.

``data:`` URLs are decoded in memory; ``http(s):`` URLs are fetched only when the server was
started with ``--allow-urls``; every other scheme (``file:``, bare paths, ...) is refused. No
path from a request is ever opened: bytes go to ``ixcdoc.inputs.open_bytes``, which sniffs
the format (PNG, JPEG, WebP, PDF, ... as for the CLI) and applies the pixel limit.
"""

from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ixcdoc.errors import InputError, UsageError

FETCH_TIMEOUT_S = 20.0


class UrlRefused(UsageError):
    """An image URL whose scheme the server does not read (or not without --allow-urls)."""

    code = "invalid_image_url"


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:[<mime>][;base64],<data>`` URL (the MIME type is not trusted)."""
    head, comma, payload = url.partition(",")
    if not comma:
        raise UrlRefused(f"malformed data URL {_short(url)!r}: no comma")
    if head.lower().endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise UrlRefused("data URL: the base64 payload does not decode") from None
    return urllib.parse.unquote_to_bytes(payload)


def fetch(url: str, max_bytes: int, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """GET an http(s) URL, at most ``max_bytes`` bytes within ``timeout`` seconds per read."""
    req = urllib.request.Request(url, headers={"User-Agent": "ixcdoc-serve"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InputError(_short(url), f"cannot fetch: {e}", code="unreadable") from None
    if len(data) > max_bytes:
        raise InputError(_short(url), f"larger than {max_bytes:,} bytes", code="too_large")
    return data


def url_bytes(url: str, *, allow_urls: bool, max_bytes: int) -> bytes:
    """The bytes an image URL points at, by the rules in this module's docstring."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return data_url_bytes(url)
    if scheme in ("http", "https"):
        if not allow_urls:
            raise UrlRefused(
                "http(s) image URLs are refused (the server would fetch them on your behalf); "
                "send the image as a data URL, or start the server with --allow-urls"
            )
        return fetch(url, max_bytes)
    raise UrlRefused(
        f"image URL {_short(url)!r} is neither a data: URL nor http(s): send the image bytes "
        "as a data URL (data:image/png;base64,...)"
    )


def open_image(url: str, *, index: int, allow_urls: bool, max_bytes: int, max_pixels: int) -> Any:
    """The first page of the document an image URL holds, as an RGB PIL image."""
    from ixcdoc.inputs import open_bytes

    data = url_bytes(url, allow_urls=allow_urls, max_bytes=max_bytes)
    with open_bytes(data, source=f"image {index + 1}", max_pixels=max_pixels) as doc:
        return doc.render(1).image
