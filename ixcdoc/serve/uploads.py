"""The documents a browser opened on the page: bytes in memory, never on disk.

An upload is read through the same input code as the CLI: ``Upload.sources()`` is a
``Sources`` whose one path is the upload's name, its bytes given as the path's ``special``
bytes (the way a pipe's bytes are read once), so ``batch.run`` and ``plan_pages`` open it from
memory and every record names the file as the browser did. No path from a request is opened.
The store keeps at most ``MAX_UPLOADS`` documents (the least recently used goes first) and each
document's latest record per page and task, for the page's downloads.
"""

from __future__ import annotations

import collections
import secrets
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.records import PageRecord, ResumeKey

MAX_UPLOADS = 16  # documents kept; each is at most --max-body-mb, so 16 x 20 MB by default
MAX_NAME = 200  # characters of a file name kept
IMAGES_KEPT = 64  # rendered page images kept across documents (thumbnails and page views)


def upload_name(raw: str | None) -> str:
    """The name a browser gave a file, as records will show it: the last path part, no control
    characters, at most ``MAX_NAME`` characters; "upload" when nothing is left (or "-", which
    means stdin everywhere else)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    name = name[:MAX_NAME]
    return "upload" if name in ("", "-", ".", "..") else name


@dataclass
class Upload:
    """One opened document: its bytes, what the input code says of it, its latest records."""

    id: str
    name: str
    data: bytes
    page_count: int
    kind: str  # the format the content was read as: PDF, PNG, JPEG, ...
    sha256: str
    notes: tuple[str, ...]
    max_pixels: int | None
    password: str | None = field(default=None, repr=False)  # an encrypted PDF's, for its pages
    records: dict[ResumeKey, PageRecord] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sources(self, pages: str | None = None) -> Sources:
        """The upload as what the CLI reads: its name, its bytes, a page selection."""
        from ixcdoc.inputs import Sources

        return Sources(
            (self.name,),
            pages=pages,
            password=self.password,
            max_pixels=self.max_pixels,
            special={self.name: self.data},
        )

    def keep(self, rec: PageRecord) -> None:
        """Remember ``rec`` as the latest record of its page and task."""
        from ixcdoc.records import resume_key

        with self.lock:
            key = resume_key(rec)
            self.records.pop(key, None)
            self.records[key] = rec

    def latest(self, task: str, prompt: str | None) -> list[PageRecord]:
        """The latest records of one task (and prompt, unless None), in page order."""
        with self.lock:
            found = [
                r
                for r in self.records.values()
                if r.task == task and (prompt is None or r.prompt == prompt)
            ]
        return sorted(found, key=lambda r: r.page or 0)

    def info(self) -> dict[str, Any]:
        """What the page shows of the document."""
        return {
            "id": self.id,
            "name": self.name,
            "bytes": len(self.data),
            "page_count": self.page_count,
            "kind": self.kind,
            "content_sha256": self.sha256,
            "notes": list(self.notes),
        }


def open_upload(
    name: str, data: bytes, *, max_pixels: int | None, password: str | None = None
) -> Upload:
    """Read the bytes as the CLI reads a file (InputError when they are no document, or an
    encrypted PDF without its password: ``password_required``, ``bad_password``)."""
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with open_bytes(data, source=name, password=password, max_pixels=limit) as doc:
        return Upload(
            id=secrets.token_urlsafe(12),
            name=name,
            data=data,
            page_count=doc.page_count,
            kind=doc.format,
            sha256=doc.sha256,
            notes=tuple(doc.notes),
            max_pixels=max_pixels,
            password=password,
        )


class UploadStore:
    """The uploads by id, at most ``MAX_UPLOADS`` (least recently used first out), and their
    rendered page images (``IMAGES_KEPT``, least recently used first out). Thread-safe."""

    def __init__(self, max_uploads: int = MAX_UPLOADS) -> None:
        self.max_uploads = max_uploads
        self._lock = threading.Lock()
        self._uploads: collections.OrderedDict[str, Upload] = collections.OrderedDict()
        self._images: collections.OrderedDict[tuple[str, int, int], bytes] = (
            collections.OrderedDict()
        )

    def add(self, upload: Upload) -> None:
        """Keep ``upload``; the least recently used one goes when the store is full."""
        with self._lock:
            self._uploads[upload.id] = upload
            while len(self._uploads) > self.max_uploads:
                gone, _ = self._uploads.popitem(last=False)
                self._drop_images(gone)

    def get(self, upload_id: str) -> Upload | None:
        """The upload, or None (never opened here, removed, or pushed out by newer ones)."""
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None:
                self._uploads.move_to_end(upload_id)
            return upload

    def remove(self, upload_id: str) -> bool:
        """Forget an upload and its images; False when there was none."""
        with self._lock:
            self._drop_images(upload_id)
            return self._uploads.pop(upload_id, None) is not None

    def _drop_images(self, upload_id: str) -> None:
        for key in [k for k in self._images if k[0] == upload_id]:
            del self._images[key]

    def pixels(self, upload: Upload, page: int, max_side: int) -> int:
        """The native pixels ``image(upload, page, max_side)`` decodes (0: it is kept)."""
        from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes

        with self._lock:
            if (upload.id, page, max_side) in self._images:
                return 0
        limit = DEFAULT_MAX_PIXELS if upload.max_pixels is None else upload.max_pixels
        with open_bytes(
            upload.data, source=upload.name, password=upload.password, max_pixels=limit
        ) as doc:
            return doc.page_info(doc.check_page(page)).pixels

    def image(self, upload: Upload, page: int, max_side: int) -> bytes:
        """Page ``page`` as a JPEG of at most ``max_side`` pixels a side (rendered once)."""
        from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes
        from ixcdoc.viewer import page_jpeg

        key = (upload.id, page, max_side)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        limit = DEFAULT_MAX_PIXELS if upload.max_pixels is None else upload.max_pixels
        with open_bytes(
            upload.data, source=upload.name, password=upload.password, max_pixels=limit
        ) as doc:
            jpeg = page_jpeg(doc.render(doc.check_page(page)).image, max_side)
        with self._lock:
            self._images[key] = jpeg
            while len(self._images) > IMAGES_KEPT:
                self._images.popitem(last=False)
        return jpeg
