"""What a file is, from its first bytes (magic numbers), never from its name."""

from __future__ import annotations

import struct

# Bytes read from the start of a file to decide its type. PDF readers accept the "%PDF-"
# header anywhere in the first 1024 bytes (some generators prepend junk), so we look as far.
HEAD_BYTES = 1024

# Format names are PIL's (``Image.format``) for images, "PDF" for PDFs.
FORMATS: tuple[str, ...] = ("PDF", "PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")

# What a file's extension claims. Used only to word messages (a lying or unknown name),
# never to decide how to open a file.
EXTENSION_FORMATS: dict[str, str] = {
    ".pdf": "PDF",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".gif": "GIF",
}

# Well-known formats we do not read, so the message can say what the file is.
_KNOWN_OTHER: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "a ZIP archive (or DOCX/XLSX/EPUB)"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file"),
    (0, b"%!PS", "PostScript"),
    (0, b"AT&TFORM", "DjVu"),
    (0, b"8BPS", "a Photoshop file"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\x1f\x8b", "gzip-compressed data"),
)
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def sniff_format(head: bytes) -> str | None:
    """The supported format of a file from its first bytes ("PDF", "PNG", ...), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18:
        # "BM" alone is too weak (any text file may start so): check the DIB header size.
        (dib_size,) = struct.unpack_from("<I", head, 14)
        if dib_size in _BMP_HEADER_SIZES:
            return "BMP"
    if b"%PDF-" in head[:HEAD_BYTES]:
        return "PDF"
    return None


def describe_unsupported(head: bytes) -> str:
    """A short phrase naming what an unsupported file looks like ("a ZIP archive", "text")."""
    for offset, magic, name in _KNOWN_OTHER:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "a HEIC image"
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        return "an MP4/QuickTime-family file"
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in head):
        return "an SVG drawing"
    if stripped[:1] == b"<":
        return "markup (HTML/XML)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the head is still text.
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return "unrecognised binary data"
    return "text"


def supported_list() -> str:
    """Human list of the supported formats, for messages."""
    return "PDF, PNG, JPEG, WebP, TIFF, BMP or GIF"
