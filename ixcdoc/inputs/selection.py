"""What to read: one value for the paths, the page selection, the password, the pixel limit
and the bytes of stdin (read once), shared by ``plan``, ``ask``, ``extract`` and the library."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from ixcdoc.errors import InputError, IxcdocError, UsageError

if TYPE_CHECKING:
    from ixcdoc.inputs.document import Document


@dataclass(frozen=True)
class Sources:
    """The documents a command reads and how: iterate ``documents()`` to open them in order.

    ``paths``: files, folders, globs, and "-" for ``stdin`` (bytes, read once by
    ``Sources.read``). ``special``: the bytes of the paths that are pipes or devices
    (``<(cat x.pdf)``, a FIFO, /dev/stdin), also read once by ``Sources.read``, so every pass
    sees them. ``exclude``: files, or folders, that a folder or glob must not yield
    (ixcdoc's own outputs, which may sit inside the folder being read).
    """

    paths: tuple[str, ...]
    pages: str | None = None
    password: str | None = None
    max_pixels: int | None = None
    stdin: bytes | None = None
    stdin_error: InputError | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    special: Mapping[str, bytes | InputError] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            raise UsageError("Sources takes a list of paths, not one string")
        object.__setattr__(self, "paths", tuple(self.paths))
        if self.paths.count("-") > 1:
            raise UsageError('"-" (stdin) can be given only once')

    @classmethod
    def read(
        cls,
        paths: Sequence[str],
        *,
        pages: str | None = None,
        password: str | None = None,
        max_pixels: int | None = None,
        stdin: BinaryIO | None = None,
        exclude: Sequence[str | os.PathLike[str]] = (),
    ) -> Sources:
        """Sources for ``paths``; read ``stdin`` (default: the process's) when one of them is
        "-", and every path that is a pipe or device, now, once (each bounded by
        MAX_STREAM_BYTES), so every later pass sees the same bytes."""
        from ixcdoc.inputs.sources import read_special_files, read_stdin

        data: bytes | None = None
        error: InputError | None = None
        if "-" in paths:
            got = read_stdin(stdin)
            if isinstance(got, InputError):
                error = got
            else:
                data = got
        return cls(
            tuple(paths),
            pages=pages,
            password=password,
            max_pixels=max_pixels,
            stdin=data,
            stdin_error=error,
            exclude=frozenset(os.path.realpath(p) for p in exclude),
            special=read_special_files(paths),
        )

    def replace(self, **changes: object) -> Sources:
        """A copy with some fields changed (e.g. the pages ``ask`` chose)."""
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]

    def open(self) -> Iterator[Document | IxcdocError]:
        """Every document in order (the caller closes each); problems are yielded."""
        import io

        from ixcdoc.inputs.document import DEFAULT_MAX_PIXELS
        from ixcdoc.inputs.sources import open_sources

        limit = DEFAULT_MAX_PIXELS if self.max_pixels is None else self.max_pixels
        for arg in self.paths:
            if arg == "-":
                if self.stdin_error is not None:
                    yield self.stdin_error
                    continue
                stream = io.BytesIO(self.stdin if self.stdin is not None else b"")
                yield from open_sources(
                    ["-"], stdin=stream, password=self.password, max_pixels=limit
                )
                continue
            named = os.path.realpath(arg) if self.exclude else None
            for item in open_sources(
                [arg], password=self.password, max_pixels=limit, special=self.special
            ):
                if self.exclude and self._excluded(item, named):
                    if not isinstance(item, IxcdocError):
                        item.close()
                    continue
                yield item

    def _excluded(self, item: Document | IxcdocError, named: str | None) -> bool:
        """True for an excluded file found by expanding a folder or glob (not named itself)."""
        source = getattr(item, "source", None)
        if not isinstance(source, str) or source == "-":
            return False
        real = os.path.realpath(source)
        if real == named:
            return False
        return any(real == ex or real.startswith(ex + os.sep) for ex in self.exclude)

    def documents(self) -> Iterator[tuple[Document, list[int]] | IxcdocError]:
        """Each open document with its selected page numbers, in order; problems are yielded.

        A document is closed when the consumer asks for the next item.
        """
        from ixcdoc.inputs.pages import select_pages

        for item in self.open():
            if isinstance(item, IxcdocError):
                yield item
                continue
            try:
                numbers = select_pages(self.pages, item.page_count, source=item.source)
            except InputError as e:
                item.close()
                yield e
                continue
            try:
                yield item, numbers
            finally:
                item.close()
