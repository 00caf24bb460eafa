"""Command-line arguments -> open documents: files, folders, globs, '-' (stdin), pipes.

Every problem becomes an InputError yielded in argument order, between the documents, so a
batch records it and goes on. The content decides what a file is (magic bytes); the name only
words the messages.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from ixcdoc.errors import InputError, UsageError
from ixcdoc.inputs.document import (
    DEFAULT_MAX_PIXELS,
    TYPE_MISMATCH,
    Document,
    check_max_pixels,
)
from ixcdoc.inputs.sniff import (
    EXTENSION_FORMATS,
    HEAD_BYTES,
    describe_unsupported,
    sniff_format,
    supported_list,
)

GLOB_CHARS = frozenset("*?[")
# Stdin, pipes and devices are held in memory (they cannot be read twice); a regular file is
# read from disk and has no such limit. 1 GiB is larger than any document worth piping and
# stops /dev/zero or an endless stream from filling RAM.
MAX_STREAM_BYTES = 1 << 30
_CHUNK = 1 << 20

# What read_special_files gives: the bytes of each pipe or device argument, or why it failed.
SpecialFiles = Mapping[str, "bytes | InputError"]
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that puts page2 before page10 (case-insensitive, then exact, for ties)."""
    parts = _DIGITS.split(name.casefold())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _path_key(rel: str) -> tuple[object, ...]:
    return tuple(natural_key(part) for part in Path(rel).parts)


def open_bytes(
    data: bytes,
    *,
    source: str = "-",
    password: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Document:
    """Open a document from bytes (stdin, a pipe); the type is sniffed from the content."""
    check_max_pixels(max_pixels)
    if not data:
        raise InputError(source, "nothing to read (0 bytes)", code="empty")
    return _open_sniffed(source, None, bytes(data), data[:HEAD_BYTES], password, max_pixels)


def open_document(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    password: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Document:
    """Open one file as a Document (raises InputError); the type is sniffed from the content."""
    check_max_pixels(max_pixels)
    shown = str(path) if source is None else source
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        problem = "broken symbolic link" if os.path.islink(p) else "no such file or folder"
        raise InputError(shown, problem, code="not_found") from e
    except PermissionError as e:
        raise InputError(shown, "permission denied", code="unreadable") from e
    except OSError as e:  # ENOTDIR ("a.pdf/x"), ENAMETOOLONG, ELOOP
        raise InputError(shown, e.strerror or str(e), code="not_found") from e
    if stat.S_ISDIR(st.st_mode):
        raise InputError(shown, "is a folder, not a file", code="unsupported")
    if not stat.S_ISREG(st.st_mode):
        # A pipe or device (e.g. bash's <(curl ...) gives /dev/fd/63): it can be read only
        # once, so open_sources callers pass bytes read by read_special_files instead.
        data = _read_special(str(path), shown, MAX_STREAM_BYTES)
        if isinstance(data, InputError):
            raise data
        return open_bytes(data, source=shown, password=password, max_pixels=max_pixels)
    if st.st_size == 0:
        raise InputError(shown, "file is empty (0 bytes)", code="empty")
    try:
        with p.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except PermissionError as e:
        raise InputError(shown, "permission denied", code="unreadable") from e
    except OSError as e:
        raise InputError(shown, f"cannot read: {e.strerror or e}", code="unreadable") from e
    if not head:
        raise InputError(shown, "file is empty (0 bytes)", code="empty")
    return _open_sniffed(shown, p, None, head, password, max_pixels)


def _read_bounded(stream: BinaryIO, source: str, limit: int) -> bytes | InputError:
    """Read a stream to its end, or fail once it passes ``limit`` bytes (never more in RAM)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = stream.read(min(_CHUNK, limit + 1 - total))
        except OSError as e:
            return InputError(source, f"cannot read: {e.strerror or e}", code="unreadable")
        if isinstance(chunk, str):
            raise UsageError(f"{source}: must be a binary stream")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return InputError(
                source,
                f"more than {_size(limit)} through a pipe or device, the most ixcdoc holds in "
                "memory; save it to a file and give that file",
                code="too_large",
            )


def _size(n: int) -> str:
    return (
        f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"
    )


def _read_special(path: str, source: str, limit: int) -> bytes | InputError:
    try:
        with open(path, "rb", buffering=0) as f:
            return _read_bounded(f, source, limit)
    except OSError as e:
        return InputError(source, f"cannot read: {e.strerror or e}", code="unreadable")


def _is_special(arg: str) -> bool:
    try:
        mode = os.stat(arg).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_special_files(
    args: Sequence[str], *, limit: int = MAX_STREAM_BYTES
) -> dict[str, bytes | InputError]:
    """Read each argument that is a pipe or device (FIFO, <(...), /dev/stdin) once, bounded.

    Pass the result to every ``open_sources`` call of the same run, so counting pages and
    running them see the same bytes instead of an exhausted pipe. Other arguments are left out.
    """
    return {
        arg: _read_special(arg, arg, limit)
        for arg in dict.fromkeys(args)
        if arg and arg != "-" and _is_special(arg)
    }


def _open_sniffed(
    source: str,
    path: Path | None,
    data: bytes | None,
    head: bytes,
    password: str | None,
    max_pixels: int,
) -> Document:
    from ixcdoc.inputs.image import ImageDocument
    from ixcdoc.inputs.pdf import PdfDocument

    fmt = sniff_format(head)
    suffix = path.suffix.lower() if path is not None else ""
    claimed = EXTENSION_FORMATS.get(suffix)
    if fmt is None:
        what = describe_unsupported(head)
        if claimed is not None:
            raise InputError(
                source,
                f"named {suffix} but the content is not {claimed} (looks like {what})",
                code="corrupt",
            )
        raise InputError(
            source,
            f"not a supported document (looks like {what}); ixcdoc reads {supported_list()}",
            code="unsupported",
        )
    note = flag = None
    if claimed is not None and claimed != fmt:
        # Trust the bytes: misnamed downloads and "save as" accidents are common, and opening
        # them by content gives the user the document they meant.
        note = f"content is {fmt} although the name ends in {suffix}; opened as {fmt}"
        flag = TYPE_MISMATCH
    elif claimed is None and suffix:
        # An unknown extension claims nothing, so nothing is contradicted: a note, no flag.
        note = f"opened as {fmt} by its content ({suffix} is not a document extension)"
    if fmt == "PDF":
        return PdfDocument(
            source, path, data, password=password, max_pixels=max_pixels, note=note, note_flag=flag
        )
    return ImageDocument(
        source, path, data, format=fmt, max_pixels=max_pixels, note=note, note_flag=flag
    )


def _try_open(
    source: str, path: str, password: str | None, max_pixels: int, *, named: bool = True
) -> Document | InputError:
    if not named and _is_special(path):
        # Found by a folder walk or a pattern: a FIFO there could block forever, and a device
        # is not a document. Named on the command line it is read (once).
        return InputError(
            source,
            "a pipe or device, not a file; name it as an argument to read it",
            code="unsupported",
        )
    try:
        return open_document(path, source=source, password=password, max_pixels=max_pixels)
    except InputError as e:
        return e


def _walk(root: str, password: str | None, max_pixels: int) -> Iterator[Document | InputError]:
    """Every non-hidden file under ``root``, in natural path order, opened or reported."""
    entries: list[tuple[tuple[object, ...], str, InputError | None]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def on_error(e: OSError) -> None:
        where = e.filename if isinstance(e.filename, str) else root
        rel = os.path.relpath(where, root)
        problem = "permission denied" if isinstance(e, PermissionError) else (e.strerror or str(e))
        err = InputError(where, f"cannot list folder: {problem}", code="unreadable")
        entries.append((_path_key(rel), where, err))

    # followlinks so a symlinked folder is read like the user sees it; seen_dirs stops loops.
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        try:
            st = os.stat(dirpath)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident is not None:
            if ident in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(ident)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            entries.append((_path_key(os.path.relpath(full, root)), full, None))

    entries.sort(key=lambda e: e[0])
    documents = 0
    unreadable = False
    for _, full, err in entries:
        if err is not None:
            unreadable = True
            yield err
            continue
        item = _try_open(full, full, password, max_pixels, named=False)
        if isinstance(item, Document) or item.code != "unsupported":
            documents += 1
        yield item
    if documents == 0 and not unreadable:
        files = len(entries)
        found = "it is empty" if files == 0 else f"{files} other file{'s' if files > 1 else ''}"
        yield InputError(
            root,
            f"no documents in this folder ({found}; hidden files are skipped); "
            f"ixcdoc reads {supported_list()}",
            code="no_documents",
        )


def _open_path_arg(
    arg: str, password: str | None, max_pixels: int, special: SpecialFiles
) -> Iterator[Document | InputError]:
    if arg in special:
        data = special[arg]
        if isinstance(data, InputError):
            yield data
            return
        try:
            yield open_bytes(data, source=arg, password=password, max_pixels=max_pixels)
        except InputError as e:
            yield e
        return
    if os.path.isdir(arg):
        yield from _walk(arg, password, max_pixels)
        return
    if not os.path.lexists(arg) and GLOB_CHARS.intersection(arg):
        # A pattern the shell did not expand (quoted, or no shell at all): expand it here,
        # with the shell's rules (hidden names need an explicit leading dot).
        matches = sorted(glob.glob(arg, recursive=True), key=_path_key)
        if not matches:
            yield InputError(arg, "no file matches this pattern", code="not_found")
            return
        for m in matches:
            if os.path.isdir(m):
                yield from _walk(m, password, max_pixels)
            else:
                yield _try_open(m, m, password, max_pixels, named=False)
        return
    yield _try_open(arg, arg, password, max_pixels)


def read_stdin(
    stdin: BinaryIO | None = None, *, limit: int = MAX_STREAM_BYTES
) -> bytes | InputError:
    """The bytes on stdin (default: the process's), at most ``limit``; a terminal is refused."""
    stream = stdin if stdin is not None else sys.stdin
    if stream is None:
        return InputError("-", "no stdin to read", code="empty")
    try:
        if stream.isatty():
            return InputError(
                "-",
                "stdin is a terminal; pipe a file in, e.g. `cat page.png | ixcdoc ...`",
                code="empty",
            )
    except (AttributeError, ValueError):
        pass
    stream = getattr(stream, "buffer", stream)  # a text stream: read its bytes
    if isinstance(stream, (str, bytes)) or not hasattr(stream, "read"):
        raise UsageError("stdin must be a binary stream")
    data = _read_bounded(stream, "-", limit)
    if isinstance(data, InputError) and data.code == "unreadable":
        return InputError(
            "-",
            f"cannot read stdin: {data.problem.removeprefix('cannot read: ')}",
            code="unreadable",
        )
    return data


def open_sources(
    args: Sequence[str],
    *,
    stdin: BinaryIO | None = None,
    password: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    special: SpecialFiles | None = None,
) -> Iterator[Document | InputError]:
    """Open every document the arguments name, in order; problems are yielded, not raised.

    ``args``: files, folders (recursive, natural path order, hidden names skipped), glob
    patterns, and "-" for the bytes on ``stdin`` (default: the process's stdin). ``special``:
    the bytes of pipe and device arguments from ``read_special_files``, for a caller that
    opens the same arguments twice (without it, such an argument is read here, once). Each
    Document must be closed by the caller. Raises UsageError only for a bad max_pixels or "-"
    given twice.
    """
    check_max_pixels(max_pixels)
    if isinstance(args, str):
        raise UsageError("open_sources takes a list of arguments, not one string")
    if sum(1 for a in args if a == "-") > 1:
        raise UsageError('"-" (stdin) can be given only once')
    for arg in args:
        if arg == "-":
            data = read_stdin(stdin)
            if isinstance(data, InputError):
                yield data
                continue
            try:
                yield open_bytes(data, source="-", password=password, max_pixels=max_pixels)
            except InputError as e:
                yield e
            continue
        if not arg:
            yield InputError("''", "empty path", code="not_found")
            continue
        yield from _open_path_arg(arg, password, max_pixels, special or {})
