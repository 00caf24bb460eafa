"""What a run's output already holds, and opening it for the run: the resume state of a records
file or of a folder of shards (the latest record per key wins), read under the lock the run's
writer then keeps (``open_records``); the latest records of a file or folder, for readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ixcdoc.records.jsonl import (
    JsonlWriter,
    PathLike,
    RecordsError,
    Scan,
    check_output,
    open_locked,
    open_locked_scan,
    scan_jsonl,
    truncate,
)
from ixcdoc.records.schema import (
    RECORD_HEADER,
    PageRecord,
    ResumeKey,
    parse_record,
    resume_key,
)


@dataclass
class ResumeState:
    """What an existing output file already holds, by resume key (the latest record wins)."""

    path: Path | None = None
    done: set[ResumeKey] = field(default_factory=set)
    failed: dict[ResumeKey, PageRecord] = field(default_factory=dict)
    count: int = 0  # valid records read or added
    repaired_bytes: int = 0  # bytes of a torn final line cut off when loading

    def should_skip(self, key: ResumeKey, *, redo_failed: bool) -> bool:
        """True when the job is done, or failed before and failures are not being redone."""
        if key in self.done:
            return True
        return key in self.failed and not redo_failed

    def add(self, rec: PageRecord) -> None:
        """Account for a record just written, so later jobs in the same run see it."""
        self._add(resume_key(rec), rec.status, lambda: rec)

    def _add(self, key: ResumeKey, status: str, record: Callable[[], PageRecord]) -> None:
        self.count += 1
        if status == "ok":
            self.done.add(key)
            self.failed.pop(key, None)
        else:
            self.done.discard(key)
            self.failed.pop(key, None)  # re-insert: dict order follows the latest record
            self.failed[key] = record()
        if key.page is not None:
            # A page-level result means the file opened after all: an earlier whole-file error
            # for the same job is stale.
            self.failed.pop(key.document(), None)


def load_existing(path: PathLike) -> ResumeState:
    """Read an output JSONL for resuming; cut a torn final record, refuse anything else.

    To write to the file as well, use ``open_output``: it reads the state under the lock it
    then keeps, so no other run can add records in between.
    """
    path = Path(path)
    check_output(path)
    state = ResumeState(path=path)
    if not path.exists():
        return state
    scan = _read_state(path, state)
    if scan.tail_problem is not None:
        truncate(path, scan.good_end, expected_size=scan.size)
        state.repaired_bytes = scan.size - scan.good_end
    return state


def open_output(path: PathLike, *, fsync: bool = True) -> tuple[JsonlWriter, ResumeState]:
    """Lock an output file for this run, then read what it holds: (writer, resume state).

    The lock is taken before anything is read and held until the writer is closed, so two
    runs on one file can never both see a page as not done (the second one stops with
    ``output_locked``). A torn final record is cut under that same lock.
    """
    path = Path(path)
    state = ResumeState(path=path)
    fd, state.repaired_bytes = open_locked_scan(path, lambda p: _read_state(p, state), fsync=fsync)
    return JsonlWriter.adopt(path, fd, fsync=fsync), state


def _read_state(path: Path, state: ResumeState) -> Scan:
    """Scan ``path`` into ``state`` (the latest record per key wins)."""
    intern: dict[str, str] = {}

    def on_record(d: dict[str, Any]) -> None:
        key = resume_key(d)
        # Millions of keys share a handful of prompts and model names: keep one copy of each.
        key = key._replace(
            prompt=intern.setdefault(key.prompt, key.prompt),
            model=intern.setdefault(key.model, key.model),
        )
        state._add(key, d["status"], lambda: PageRecord.from_dict(d))

    return scan_jsonl(path, on_record, parse=parse_record, header=RECORD_HEADER)


def latest_records(path: PathLike) -> list[PageRecord]:
    """The last record per resume key, in first-seen order; a torn final line is ignored."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such output file", code="not_found")
    check_output(path)
    latest: dict[ResumeKey, dict[str, Any]] = {}

    def on_record(d: dict[str, Any]) -> None:
        key = resume_key(d)
        latest[key] = d  # an existing key keeps its first-seen position
        if key.page is not None:
            latest.pop(key.document(), None)

    scan_jsonl(path, on_record, parse=parse_record, header=RECORD_HEADER)
    return [PageRecord.from_dict(d) for d in latest.values()]


def shard_paths(directory: PathLike) -> list[Path]:
    """The ``*.jsonl`` shards of an output folder, in name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordsError(f"{directory}: no such output folder", code="not_found")
    return sorted(p for p in directory.glob("*.jsonl") if p.is_file())


SHARD_LOCK = ".ixcdoc-lock"


def lock_shards(directory: PathLike) -> int:
    """Lock a folder of shards for one run (a descriptor to close at the end): a second run on
    the same folder stops with ``output_locked`` instead of redoing the same pages."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "it is a file" if isinstance(e, FileExistsError) else (e.strerror or str(e))
        raise RecordsError(
            f"cannot use {directory}/ as a folder of shards: {why}", code="output_dir"
        ) from None
    return open_locked(directory / SHARD_LOCK)


def load_shards(directory: PathLike) -> ResumeState:
    """The resume state of a folder of shards: done anywhere is done; failed is failed only
    where no shard has the page done. Each shard's torn last line is repaired."""
    total = ResumeState(path=Path(directory))
    for shard in shard_paths(directory):
        state = load_existing(shard)
        total.done |= state.done
        total.failed.update(state.failed)
        total.count += state.count
        total.repaired_bytes += state.repaired_bytes
    for key in total.done:
        total.failed.pop(key, None)
    return total


def is_shard_dir(output: PathLike) -> bool:
    """``-o DIR/`` (a trailing slash, or an existing folder): a folder of JSONL shards."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or os.path.isdir(text)


class ShardWriter:
    """A run's records appended to a new shard ``DIR/part-<id>.jsonl``, made on the first
    record (a run with nothing to do leaves no empty shard); the folder's lock is held from
    ``open_records`` until ``close``."""

    def __init__(self, directory: Path, lock: int, *, fsync: bool = True) -> None:
        self.directory = directory
        self.path: Path | None = None  # the shard, once the first record made it
        self.count = 0
        self._lock: int | None = lock
        self._fsync = fsync
        self._writer: JsonlWriter | None = None

    def write(self, rec: PageRecord) -> None:
        """Append one record to this run's shard (made now if this is the first)."""
        if self._writer is None:
            import uuid

            self.path = self.directory / f"part-{uuid.uuid4().hex[:12]}.jsonl"
            self._writer = JsonlWriter(self.path, fsync=self._fsync)
        self._writer.write(rec)
        self.count += 1

    def close(self) -> None:
        """Close the shard and release the folder's lock; closing twice is harmless."""
        if self._writer is not None:
            self._writer.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def open_records(output: PathLike, *, fsync: bool = True) -> tuple[Any, ResumeState]:
    """(writer, resume state) for a run's ``-o``: a file (``open_output``), or a folder of
    shards (``is_shard_dir``) whose shards together are the state and which gets a new shard.
    Both are locked before anything is read, until the writer is closed."""
    if not is_shard_dir(output):
        return open_output(output, fsync=fsync)
    lock = lock_shards(output)
    try:
        state = load_shards(output)
    except BaseException:
        os.close(lock)
        raise
    return ShardWriter(Path(output), lock, fsync=fsync), state


def latest_of(output: PathLike) -> list[PageRecord]:
    """``latest_records`` of a file, or ``merge_shards`` of a folder of shards."""
    if is_shard_dir(output):
        return merge_shards(shard_paths(output))
    return latest_records(output)


def merge_shards(paths: list[Path]) -> list[PageRecord]:
    """The latest record per resume key over several shards, oldest first.

    "Latest" is by ``created_at``; records of the same second keep their file order (shards
    in the order given). A page-level record supersedes its document's whole-file error.
    """
    dated: list[tuple[str, int, int, PageRecord]] = []
    for i, path in enumerate(paths):
        for j, rec in enumerate(latest_records(path)):
            dated.append((rec.created_at, i, j, rec))
    dated.sort(key=lambda t: t[:3])
    latest: dict[ResumeKey, PageRecord] = {}
    for *_, rec in dated:
        key = resume_key(rec)
        latest.pop(key, None)  # re-insert: the order follows the latest record
        latest[key] = rec
        if key.page is not None:
            latest.pop(key.document(), None)
    return list(latest.values())
