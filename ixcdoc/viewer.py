"""``ixcdoc view``: the records of an ``extract`` run beside their pages, with no model.

``read_run(path)`` reads the latest record of every page (``records.latest_records``; a folder:
its ``--out-dir`` records file, or the shards of ``extract --ray -o DIR/`` merged as ``ixcdoc
merge`` merges them). ``view_data`` groups them by document and page and gives each page an
image, re-rendered from the source when the file is still where the run read it and has the
same bytes (``content_sha256``). ``view_html`` is one self-contained HTML file (the page's
assets inlined, images as data URLs); ``ViewServer`` serves the same page on 127.0.0.1 and
renders the images when the browser asks for them.

``page_jpeg`` (a page image at a modest size) is shared with the server's web page.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import InputError, IxcdocError, UsageError

if TYPE_CHECKING:
    from PIL import Image

    from ixcdoc.records import PageRecord

VIEW_SIDE = 1100  # pixels on the long side of a page image in the viewer: readable, small
JPEG_QUALITY = 82
# Search for a record's source (a path relative to where extract ran) in the current folder,
# then in the records file's folder and this many folders above it.
SEARCH_UP = 2


def page_jpeg(image: Image.Image, max_side: int, quality: int = JPEG_QUALITY) -> bytes:
    """A page image as JPEG bytes, shrunk (never enlarged) to ``max_side`` pixels a side."""
    from PIL import Image as PILImage

    im = image.convert("RGB") if image.mode != "RGB" else image.copy()
    im.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def web_asset(name: str) -> str:
    """The text of a file of the web page (``ixcdoc/serve/web/``, shipped in the package)."""
    return resources.files("ixcdoc.serve").joinpath("web", name).read_text(encoding="utf-8")


# ---- the records ----------------------------------------------------------------------------


@dataclass
class Run:
    """The records of one run and the file they came from."""

    path: Path  # the records file (or the shard folder)
    records: list[PageRecord]


def read_run(path: str | os.PathLike[str]) -> Run:
    """The latest record per page of a records file, an ``--out-dir`` folder or a shard folder."""
    from ixcdoc.records import latest_records, merge_shards, shard_paths

    p = Path(path)
    if p.is_dir():
        inner = p / ".ixcdoc" / "records.jsonl"
        if inner.is_file():
            return Run(inner, latest_records(inner))
        shards = shard_paths(p)
        if not shards:
            raise UsageError(
                f"{p}: no records here (neither an --out-dir folder with .ixcdoc/records.jsonl "
                "nor *.jsonl shards)"
            )
        return Run(p, merge_shards(shards))
    return Run(p, latest_records(p))


def _candidates(source: str, records_at: Path) -> list[Path]:
    """Where the file a record names may be now: as given, then beside the records."""
    given = Path(source)
    if given.is_absolute():
        return [given]
    found = [given]
    folder = records_at if records_at.is_dir() else records_at.parent
    for _ in range(SEARCH_UP + 1):
        found.append(folder / given)
        if folder.parent == folder:
            break
        folder = folder.parent
    return list(dict.fromkeys(found))


class SourceFiles:
    """Finds each document's source file (same bytes) and renders its pages, once each."""

    def __init__(self, records_at: Path, password: str | None = None) -> None:
        self.records_at = records_at
        self.password = password
        self._where: dict[tuple[str, str | None], Path | str] = {}  # path, or why there is none
        self._lock = threading.Lock()

    def locate(self, source: str, sha256: str | None) -> Path | str:
        """The file with these bytes, or a one-line reason why no image can be shown."""
        from ixcdoc.inputs import file_sha256

        key = (source, sha256)
        with self._lock:
            if key in self._where:
                return self._where[key]
        where: Path | str = f"{source}: not found (the image is re-rendered from the source)"
        if source == "-":
            where = "read from stdin: no file to show"
        else:
            for cand in _candidates(source, self.records_at):
                if not cand.is_file():
                    continue
                try:
                    same = sha256 is not None and file_sha256(cand) == sha256
                except OSError:
                    continue
                if same:
                    where = cand
                    break
                where = f"{cand}: changed since the run (other bytes): no image"
        with self._lock:
            self._where[key] = where
        return where

    def jpeg(self, source: str, sha256: str | None, page: int, max_side: int) -> bytes:
        """Page ``page`` of the document as a JPEG (InputError when it cannot be rendered)."""
        from ixcdoc.inputs import open_document

        where = self.locate(source, sha256)
        if isinstance(where, str):
            raise InputError(source, where.removeprefix(f"{source}: "), code="not_found")
        with open_document(where, source=source, password=self.password) as doc:
            return page_jpeg(doc.render(doc.check_page(page)).image, max_side)


# ---- the page's data ------------------------------------------------------------------------


@dataclass
class _Doc:
    source: str
    sha256: str | None
    page_count: int | None
    pages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    file_errors: list[dict[str, Any]] = field(default_factory=list)


def _documents(records: list[PageRecord]) -> list[_Doc]:
    """Records grouped by document (source and bytes), in first-seen order."""
    docs: dict[tuple[str, str | None], _Doc] = {}
    for rec in records:
        key = (rec.source, rec.content_sha256)
        doc = docs.setdefault(key, _Doc(rec.source, rec.content_sha256, rec.page_count))
        if rec.page is None:
            doc.file_errors.append(rec.to_dict())
        else:
            doc.pages.setdefault(rec.page, []).append(rec.to_dict())
    return list(docs.values())


ImageFor = Any  # (doc_index, source, sha256, page) -> str | None: an image URL, or None


def view_data(run: Run, image_for: ImageFor, *, title: str | None = None) -> dict[str, Any]:
    """What the viewer page shows: documents, their pages and records, an image URL per page.

    ``image_for(doc_index, source, sha256, page)`` returns the page's image URL (a data URL for
    a file, a path for the server) or None; ``image_note`` says why a document has none.
    """
    from ixcdoc.records import utc_now

    documents = []
    for i, doc in enumerate(_documents(run.records)):
        pages = []
        for number in sorted(doc.pages):
            recs = doc.pages[number]
            pages.append(
                {
                    "page": number,
                    "image": image_for(i, doc.source, doc.sha256, number),
                    "records": recs,
                }
            )
        documents.append(
            {
                "source": doc.source,
                "content_sha256": doc.sha256,
                "page_count": doc.page_count,
                "pages": pages,
                "file_errors": doc.file_errors,
                "image_note": None,
            }
        )
    return {
        "title": title or str(run.path),
        "records_file": str(run.path),
        "generated": utc_now(),
        "documents": documents,
    }


def _note_missing(data: dict[str, Any], sources: SourceFiles) -> None:
    """Say, per document without images, why (not found, other bytes, stdin)."""
    for doc in data["documents"]:
        if doc["pages"] and all(p["image"] is None for p in doc["pages"]):
            where = sources.locate(doc["source"], doc["content_sha256"])
            doc["image_note"] = where if isinstance(where, str) else "the pages could not render"


def data_urls(run: Run, sources: SourceFiles, max_side: int = VIEW_SIDE) -> dict[str, Any]:
    """``view_data`` with every image embedded as a data URL (for ``--html``)."""

    def embed(_: int, source: str, sha256: str | None, page: int) -> str | None:
        try:
            jpeg = sources.jpeg(source, sha256, page, max_side)
        except (IxcdocError, OSError):
            return None
        return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")

    data = view_data(run, embed)
    _note_missing(data, sources)
    return data


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside a <script> element: no "</script>", no "<!--", no U+2028/9."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def view_html(data: dict[str, Any], *, img_src: str = "data:") -> str:
    """The viewer as one HTML document: styles, scripts and data inline, nothing fetched.

    ``img_src``: the CSP sources images may come from (``data:`` for a file; the server adds
    ``'self'``). The Content-Security-Policy forbids every other request.
    """
    from html import escape

    page = web_asset("view.html")
    parts = {
        "TITLE": escape(f"ixcdoc view: {data['title']}"),
        "IMG_SRC": img_src,
        "STYLE": web_asset("style.css"),
        # "</" cannot end the script element early (the scripts hold it in no string anyway)
        "SCRIPTS": (web_asset("markdown.js") + "\n" + web_asset("view.js")).replace("</", "<\\/"),
        "DATA": _script_json(data),
    }
    # One pass: a mark inside a value (a file named "{{DATA}}") is never replaced again.
    return _MARK.sub(lambda m: parts[m.group(1)], page)


_MARK = re.compile(r"\{\{(TITLE|IMG_SRC|STYLE|SCRIPTS|DATA)\}\}")


# ---- served on 127.0.0.1 --------------------------------------------------------------------


class ViewServer:
    """The viewer on 127.0.0.1 (stdlib ``http.server``): the page at ``/``, page images at
    ``/img/DOC/PAGE.jpg`` rendered when asked for. ``url`` once bound; ``serve_forever()``."""

    def __init__(
        self, run: Run, sources: SourceFiles, *, port: int = 0, max_side: int = VIEW_SIDE
    ) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.sources = sources
        images: dict[tuple[int, int], tuple[str, str | None]] = {}

        def url(i: int, source: str, sha256: str | None, page: int) -> str | None:
            if isinstance(sources.locate(source, sha256), str):
                return None
            images[(i, page)] = (source, sha256)
            return f"/img/{i}/{page}.jpg"

        data = view_data(run, url)
        _note_missing(data, sources)
        html = view_html(data, img_src="'self' data:").encode("utf-8")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the stdlib's hook name
                if self.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", html)
                    return
                key = _image_key(self.path)
                if key is None or key not in images:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
                    return
                source, sha = images[key]
                try:
                    jpeg = sources.jpeg(source, sha, key[1], max_side)
                except (IxcdocError, OSError) as e:
                    self._send(404, "text/plain; charset=utf-8", f"{e}\n".encode())
                    return
                self._send(200, "image/jpeg", jpeg)

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # stderr is for people: no access log

        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise UsageError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        """The address the page is served at."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` (or Ctrl-C in the caller)."""
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread)."""
        self.httpd.shutdown()


def _image_key(path: str) -> tuple[int, int] | None:
    """``/img/3/12.jpg`` -> (3, 12)."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) != 4 or parts[1] != "img" or not parts[3].endswith(".jpg"):
        return None
    doc, page = parts[2], parts[3].removesuffix(".jpg")
    if not (doc.isdigit() and page.isdigit()):
        return None
    return int(doc), int(page)
