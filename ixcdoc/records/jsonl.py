"""The crash-safe JSONL file, for any ixcdoc record kind (page records, evaluation records).

Whole lines appended and fsynced one at a time under an exclusive lock held for the whole
run, so a crash leaves at most one torn final line; reading streams the lines with a bound,
cuts only such a torn tail (under the same lock) and refuses anything else, so a file that is
not ixcdoc's is never modified. The record kind comes in as a ``parse`` function and the bytes
its lines start with (``schema.RECORD_HEADER`` for page records).
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from ixcdoc.errors import EXIT_FATAL, IxcdocError
from ixcdoc.records.schema import PageRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: concurrent writers go undetected
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike[str]

# A record holds one page's text, bounded by the generation length; 64 MiB is far above any
# real record and keeps a file of one endless line (or a device like /dev/zero) from filling RAM.
MAX_LINE_BYTES = 64 * 1024 * 1024


class RecordsError(IxcdocError):
    """The output JSONL cannot be read, repaired or written; the message names file and line."""

    exit_code = EXIT_FATAL
    code = "output"


@dataclass
class Scan:
    """What ``scan_jsonl`` read: where the last good record ends, and why the rest may be cut."""

    size: int  # bytes read
    good_end: int  # offset just past the last valid, newline-terminated record
    tail_problem: str | None  # why the bytes after good_end may be cut, when there are any


def open_locked_scan(
    path: Path, scan: Callable[[Path], Scan], *, fsync: bool = True
) -> tuple[int, int]:
    """Lock ``path`` (created if missing), run ``scan`` over it, cut a torn tail under the lock:
    (the locked append descriptor, bytes cut). For any ixcdoc JSONL (records, evaluation)."""
    check_output(path)
    existed = path.exists()
    fd = open_locked(path)
    try:
        result = scan(path)
        cut = 0
        if result.tail_problem is not None:
            if os.fstat(fd).st_size != result.size:  # pragma: no cover - we hold the lock
                raise RecordsError(f"{path} changed while being read", code="output_locked")
            os.ftruncate(fd, result.good_end)
            os.fsync(fd)
            cut = result.size - result.good_end
        if not existed and fsync:
            _fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd, cut


def scan_jsonl(
    path: Path,
    on_record: Callable[[dict[str, Any]], None],
    *,
    parse: Callable[[str], dict[str, Any]],
    header: bytes,
) -> Scan:
    """Stream the records of a JSONL file; only a torn final record may follow the last one.

    Everything after the last complete record must be what an interrupted append leaves: one
    final segment without a newline that is (a prefix of) an ixcdoc record line, or NUL bytes
    (a crash after the file size, but not the data, reached the disk). Any other line, in the
    middle or at the end, raises: a file that is not ixcdoc's is never modified. ``parse``
    turns a line into a checked record (ValueError if it is not one); ``header``: the bytes
    every record line of this kind starts with.
    """
    offset = good_end = lineno = records = 0
    tail: str | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise RecordsError(f"cannot read {path}: {e.strerror or e}", code="output") from e
    with open(fd, "rb") as f:
        _require_regular(path, os.fstat(fd).st_mode)
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            offset += len(raw)
            if len(raw) > MAX_LINE_BYTES:
                raise RecordsError(
                    f"{path} line {lineno} is longer than {MAX_LINE_BYTES // 2**20} MiB: "
                    "not an ixcdoc record; choose another output file",
                    code="corrupt_output",
                )
            filler = not raw.strip(b"\x00 \t\r\n")  # blank, or NUL bytes a crash can leave
            if filler and (raw.endswith(b"\n") or b"\x00" in raw):
                if b"\x00" in raw and tail is None:
                    if not records:
                        _not_ours(path, lineno, "it holds NUL bytes")
                    tail = f"line {lineno} holds only NUL bytes"
                continue
            if tail is not None:  # text after a NUL fill: not what a crash leaves
                _corrupt(path, lineno, "text after NUL bytes")
            if not raw.endswith(b"\n"):  # only the final segment can lack a newline
                if _is_torn_record(raw, after_records=records > 0, header=header):
                    tail = f"line {lineno} is incomplete (no newline at the end)"
                    break
                why = "an incomplete line that is not the start of a record"
                if not records:
                    _not_ours(path, lineno, why)
                _corrupt(path, lineno, why)
            try:
                d = parse(raw.decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
                if not records:
                    _not_ours(path, lineno, _what_it_is(e))
                _corrupt(path, lineno, str(e))
            on_record(d)
            records += 1
            good_end = offset
    return Scan(size=offset, good_end=good_end, tail_problem=tail)


def _is_torn_record(raw: bytes, *, after_records: bool, header: bytes) -> bool:
    """True when an unterminated final line can only be an interrupted ixcdoc append."""
    if raw.startswith(header):
        return True
    # A few bytes of a header prove nothing on their own: trust them only after real records.
    return after_records and header.startswith(raw)


def _what_it_is(e: ValueError) -> str:
    """Why a line of someone else's file is not a record, in a few words."""
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, json.JSONDecodeError):
        return "not JSON"
    if str(e).startswith("missing keys: schema_version"):
        return "JSON without the keys of an ixcdoc record"
    return str(e)


def _one_line(why: str, limit: int = 120) -> str:
    why = " ".join(why.split())
    return why if len(why) <= limit else why[: limit - 3] + "..."


def _corrupt(path: Path, lineno: int, why: str) -> NoReturn:
    raise RecordsError(
        f"{path} line {lineno}: not a valid record ({_one_line(why)}); only a torn final line "
        "is repaired automatically, so fix or remove this line and run again",
        code="corrupt_output",
    )


def _not_ours(path: Path, lineno: int, why: str) -> NoReturn:
    raise RecordsError(
        f"{path} is not an ixcdoc output file (line {lineno}: {_one_line(why)}); it was left "
        "untouched: choose another output file",
        code="not_records",
    )


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
}


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise RecordsError(
            f"cannot use {path}: it is {kind}; the output must be a regular file "
            "(for a pipe, write JSONL to stdout instead)",
            code="output",
        )


def check_output(path: Path) -> None:
    """Refuse a missing directory or an existing output that is not a regular file."""
    if not path.parent.is_dir():
        raise RecordsError(
            f"cannot use {path}: directory {path.parent} does not exist", code="output_dir"
        )
    try:
        mode = path.stat().st_mode  # follows a symlink: what the data would go to
    except FileNotFoundError:
        return
    except OSError as e:
        raise RecordsError(f"cannot use {path}: {e.strerror or e}", code="output") from e
    _require_regular(path, mode)


def _lock(fd: int, path: Path) -> None:
    """Take an exclusive advisory lock, or fail if another process writes this file."""
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        raise RecordsError(
            f"{path} is being written by another process; wait for it or choose another output",
            code="output_locked",
        ) from e
    except OSError:  # pragma: no cover - file systems without flock (some NFS): carry on
        pass


def truncate(path: Path, size: int, *, expected_size: int) -> None:
    """Cut a torn final line off, unless another process is writing the file."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise RecordsError(f"cannot repair {path}: {e.strerror or e}", code="output") from e
    try:
        _lock(fd, path)
        if os.fstat(fd).st_size != expected_size:
            raise RecordsError(
                f"{path} changed while being read; is another process writing it?",
                code="output_locked",
            )
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as e:
        raise RecordsError(f"cannot repair {path}: {e.strerror or e}", code="output") from e
    finally:
        os.close(fd)


# --- writer ------------------------------------------------------------------------------------


_W = TypeVar("_W", bound="JsonlWriter")


class JsonlWriter:
    """Appends records as JSON lines: to a file (each line flushed and fsynced) or to stdout.

    ``path`` "-" means ``sys.stdout``; a text stream is written to as is (flushed per line,
    never closed). The writer does not deduplicate: ask ``ResumeState.should_skip`` first.
    """

    def __init__(self, path: PathLike | TextIO, *, fsync: bool = True) -> None:
        self.count = 0  # records written by this writer
        self._fd: int | None = None
        self._stream: TextIO | None = None
        self._closed = False
        self._broken: str | None = None
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) != "-":
            self.path: Path | None = Path(path)
            self._fsync = fsync
            self._fd = _open_append(self.path, fsync=fsync)
            self._ascii = False
        else:
            self.path = None
            self._fsync = False
            self._stream = sys.stdout if isinstance(path, (str, os.PathLike)) else path
            self._ascii = not _is_utf8(self._stream)

    @classmethod
    def adopt(cls: type[_W], path: Path, fd: int, *, fsync: bool = True) -> _W:
        """A writer over an append descriptor already opened and locked (``open_locked_scan``)."""
        w = cls.__new__(cls)
        w.count, w._fd, w._stream, w._closed, w._broken = 0, fd, None, False, None
        w.path, w._fsync, w._ascii = path, fsync, False
        return w

    def write(self, rec: PageRecord) -> None:
        """Write one record as one complete line, then flush (and fsync a file)."""
        if not isinstance(rec, PageRecord):
            raise TypeError(f"JsonlWriter.write takes a PageRecord, got {type(rec).__name__}")
        self.write_line(rec.to_json(ensure_ascii=self._ascii) + "\n")

    def write_line(self, line: str) -> None:
        """Write one complete JSON line (ending in a newline) of any ixcdoc JSONL, then flush
        (and fsync a file): the caller has checked it against its schema."""
        if self._closed:
            raise ValueError(f"write to a closed {type(self).__name__}")
        if self._broken is not None:
            raise RecordsError(self._broken, code="write_failed")
        if self._stream is not None:
            self._stream.write(line)
            self._stream.flush()
        else:
            data = line.encode("utf-8")
            if len(data) > MAX_LINE_BYTES:  # resuming could not read it back
                raise RecordsError(
                    f"cannot write to {self.path}: a record of {len(data)} bytes is over the "
                    f"{MAX_LINE_BYTES // 2**20} MiB line limit",
                    code="write_failed",
                )
            self._append(data)
        self.count += 1

    def _append(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        except BaseException as e:
            # Never leave a partial line that the next record would follow: that would turn a
            # repairable torn tail into a corrupt middle line.
            try:
                os.ftruncate(fd, before)
            except OSError:
                self._broken = f"{self.path} ends with a partial line after a failed write"
            if isinstance(e, OSError):
                raise RecordsError(
                    f"cannot write to {self.path}: {e.strerror or e}", code="write_failed"
                ) from e
            raise

    def close(self) -> None:
        """Flush and close (a stream is flushed, not closed); closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None
        elif self._stream is not None:
            self._stream.flush()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_utf8(stream: TextIO) -> bool:
    encoding = getattr(stream, "encoding", None)
    if not encoding:  # in-memory text (StringIO): no encoding step at all
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def open_locked(path: Path) -> int:
    """Open for appending (created if missing) and take the exclusive lock."""
    # O_NONBLOCK: a FIFO swapped in after the check must not hang the open; fstat refuses it.
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise RecordsError(f"cannot open {path} for writing: {e.strerror or e}") from e
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        _lock(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_append(path: Path, *, fsync: bool) -> int:
    """Open for appending, locked; refuse a file whose last line is torn (load it first)."""
    check_output(path)
    existed = path.exists()
    fd = open_locked(path)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                raise RecordsError(
                    f"{path} ends with an incomplete line; call load_existing() on it first, "
                    "which repairs it",
                    code="torn_output",
                )
        if not existed and fsync:
            _fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)
