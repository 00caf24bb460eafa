"""Output records: the JSONL schema, a crash-safe appending writer and the resume index.

Pure standard library. One JSON object per page and per line; the keys, their order and their
types are the documented contract (docs/output.md). The writer appends whole lines and fsyncs
each one, so a crash leaves at most one torn final line, which ``load_existing`` repairs. When a
key appears more than once in a file, the latest record wins.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TextIO

from ixcdoc.errors import EXIT_FATAL, IxcdocError
from ixcdoc.tasks import PRESETS

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: concurrent writers go undetected
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
TASKS = tuple(PRESETS)  # the task names, from the presets
STATUSES = ("ok", "error")
FLAGS = (
    "blank",
    "repetition",
    "tier_fallback",
    "repaired",
    "type_mismatch",
    "frames_dropped",
    "low_dpi",
)
PRECISIONS = ("bf16", "fp16", "4bit", "fp32")
TIMING_KEYS = ("render_ms", "preprocess_ms", "prefill_ms", "decode_ms", "tokens")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what jq's fromdateiso8601 reads

PathLike = str | os.PathLike[str]

# A record holds one page's text, bounded by the generation length; 64 MiB is far above any
# real record and keeps a file of one endless line (or a device like /dev/zero) from filling RAM.
MAX_LINE_BYTES = 64 * 1024 * 1024
# Every line the writer makes starts with these bytes: the only thing a torn tail may look like.
RECORD_HEADER = f'{{"schema_version":{SCHEMA_VERSION},"source":'.encode()


class RecordsError(IxcdocError):
    """The output JSONL cannot be read, repaired or written; the message names file and line."""

    exit_code = EXIT_FATAL
    code = "output"


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a Z suffix, to the second."""
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


@dataclass(frozen=True)
class ErrorInfo:
    """Why a page failed: a machine-readable code and a message for people."""

    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """The code and message of an IxcdocError (code "error" for anything else)."""
        code = exc.code if isinstance(exc, IxcdocError) else "error"
        return cls(code=code, message=str(exc) or type(exc).__name__)


@dataclass(frozen=True)
class Timings:
    """Per-page timings in milliseconds (None: the stage did not run) and generated tokens."""

    render_ms: float | None = None
    preprocess_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Screening:
    """How ``ask`` chose a page among a document's: the screening tier, the model's score of
    every screened page (log-odds of "yes" to "does this page answer the question"), and the
    pages chosen, best first (docs/screening.md)."""

    tier: int
    scores: Mapping[int, float]
    chosen: tuple[int, ...]

    def __post_init__(self) -> None:
        fix = object.__setattr__
        # JSON keys are strings; pages are numbers here, in page order.
        scores = sorted(self.scores.items(), key=_page)
        fix(self, "scores", {int(p): round(float(v), SCREENING_DIGITS) for p, v in scores})
        fix(self, "chosen", tuple(self.chosen))

    def __hash__(self) -> int:
        return hash((self.tier, tuple(self.scores.items()), self.chosen))

    def to_dict(self) -> dict[str, Any]:
        """``{"tier": 4, "scores": {"1": -0.4, "2": 1.3}, "chosen": [2]}``."""
        scores = {str(p): v for p, v in self.scores.items()}
        return {"tier": self.tier, "scores": scores, "chosen": list(self.chosen)}


SCREENING_DIGITS = 6  # decimals a screening score keeps (the record round-trips exactly)


def _page(item: tuple[Any, Any]) -> int:
    return int(item[0])


@dataclass(frozen=True, kw_only=True)
class PageRecord:
    """One output line: the result (or failure) of one task on one page. Fields in key order."""

    schema_version: int = SCHEMA_VERSION
    source: str
    content_sha256: str | None  # None only for an error where the bytes could not be read
    page: int | None  # 1-based; None only for an error about the whole file
    page_count: int | None
    task: str
    question: str | None = None
    prompt: str
    text: str = ""
    status: str
    error: ErrorInfo | None = None
    flags: tuple[str, ...] = ()
    hd_setting: str = "auto"
    tier: int | None = None
    grid: tuple[int, int] | None = None
    image_tokens: int | None = None
    native_size: tuple[int, int] | None = None
    render_dpi: float | None = None
    model: str
    model_revision: str | None = None
    precision: str | None  # None: no page reached the model, so none was loaded
    device: str
    timings: Timings = field(default_factory=Timings)
    created_at: str = field(default_factory=utc_now)
    # Optional: only a distributed run (``--ray``) writes it, last, and only when set, so a
    # one-machine file is unchanged and older files (without the key) still read.
    worker: str | None = None
    # Optional: beam search (``--beams N``, N > 1); part of the resume key (absent: 1).
    num_beams: int | None = None
    # Optional: ``ask`` chose this page by the model's screening of the document's pages (not
    # part of the resume key: the question, tier setting and model are).
    screening: Screening | None = None

    def __post_init__(self) -> None:
        validate_record(self.to_dict())
        # Normalize what JSON (or a caller) gives as lists and dicts, so equal records compare
        # equal and a record round-trips through its JSON line unchanged.
        fix = object.__setattr__
        fix(self, "flags", tuple(self.flags))
        for name in ("grid", "native_size"):
            value = getattr(self, name)
            if value is not None:
                fix(self, name, tuple(value))
        if isinstance(self.error, Mapping):
            fix(self, "error", ErrorInfo(**self.error))
        if isinstance(self.screening, Mapping):
            fix(self, "screening", Screening(**self.screening))
        timings = self.timings
        if isinstance(timings, Mapping):
            timings = Timings(**timings)
        fix(self, "timings", _floats(timings, ("tokens",)))
        if self.render_dpi is not None:
            fix(self, "render_dpi", float(self.render_dpi))

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-ready dict, keys in schema order (optional ones if set)."""
        d = {name: _plain(getattr(self, name)) for name in FIELDS}
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                d[name] = _plain(value)
        return d

    def to_json(self, *, ensure_ascii: bool = False) -> str:
        """The record as one JSON line (no newline at the end; never NaN)."""
        text = json.dumps(
            self.to_dict(), ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":")
        )
        # JSON allows these raw, but str.splitlines() and some readers split on them, and lone
        # surrogates (from a bad decode) cannot be encoded as UTF-8: escape them.
        return _UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PageRecord:
        """Build a record from a parsed JSON object; ValueError names wrong or missing keys."""
        if not isinstance(d, Mapping) or not _FIELD_SET <= set(d) <= _ALL_FIELD_SET:
            validate_record(d)  # raises, naming missing and unexpected keys
        return cls(**d)  # __post_init__ validates the values


# Optional keys: absent means null. Every other key is required.
OPTIONAL_FIELDS: tuple[str, ...] = ("worker", "num_beams", "screening")
FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(PageRecord) if f.name not in OPTIONAL_FIELDS
)
_FIELD_SET = frozenset(FIELDS)
_ALL_FIELD_SET = _FIELD_SET | frozenset(OPTIONAL_FIELDS)
_UNSAFE_CHARS = re.compile("[\x85\u2028\u2029\ud800-\udfff]")


def _plain(value: Any) -> Any:
    if isinstance(value, Screening):
        return value.to_dict()
    if isinstance(value, (ErrorInfo, Timings)):
        return dataclasses.asdict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _floats(timings: Timings, keep: tuple[str, ...]) -> Timings:
    changes = {
        f.name: float(getattr(timings, f.name))
        for f in dataclasses.fields(timings)
        if f.name not in keep and getattr(timings, f.name) is not None
    }
    return dataclasses.replace(timings, **changes)


# --- validation -------------------------------------------------------------------------------

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_HD_RE = re.compile(r"auto|[1-9][0-9]*")
_CODE_RE = re.compile(r"[a-z][a-z0-9_]*")
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")  # TIME_FORMAT

Check = Callable[[Any], bool]


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_num(v: Any, positive: bool = False) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > 0 if positive else v >= 0)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_pair(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x, 1) for x in v)


def _is_time(v: Any) -> bool:
    match = _TIME_RE.fullmatch(v) if isinstance(v, str) else None
    if match is None:
        return False
    try:
        datetime(*map(int, match.groups()))  # a real date and time (strptime is 10x slower)
    except ValueError:
        return False
    return True


def _is_flags(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and all(isinstance(x, str) and x in FLAGS for x in v)
        and len(set(v)) == len(v)
    )


def _is_error(v: Any) -> bool:
    if isinstance(v, ErrorInfo):
        v = dataclasses.asdict(v)
    return (
        isinstance(v, Mapping)
        and set(v) == {"code", "message"}
        and isinstance(v["code"], str)
        and _CODE_RE.fullmatch(v["code"]) is not None
        and isinstance(v["message"], str)
    )


def _is_timings(v: Any) -> bool:
    if isinstance(v, Timings):
        v = dataclasses.asdict(v)
    if not (isinstance(v, Mapping) and set(v) == set(TIMING_KEYS)):
        return False
    ms_ok = all(v[k] is None or _is_num(v[k]) for k in TIMING_KEYS if k != "tokens")
    return ms_ok and (v["tokens"] is None or _is_int(v["tokens"]))


def _is_screening(v: Any) -> bool:
    if isinstance(v, Screening):
        v = v.to_dict()
    if not (isinstance(v, Mapping) and set(v) == {"tier", "scores", "chosen"}):
        return False
    scores, chosen = v["scores"], v["chosen"]
    if not (_is_int(v["tier"], 1) and isinstance(scores, Mapping) and scores):
        return False
    pages = [_page_key(p) for p in scores]
    if None in pages or len(set(pages)) != len(pages):
        return False
    finite = all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        for x in scores.values()
    )
    return (
        finite
        and isinstance(chosen, (list, tuple))
        and bool(chosen)
        and all(_is_int(p, 1) for p in chosen)
        and len(set(chosen)) == len(chosen)
        and set(chosen) <= set(pages)
    )


def _page_key(p: Any) -> int | None:
    """A screening score's key as a page number: "2" (JSON) or 2; None when it is neither."""
    if _is_int(p, 1):
        return int(p)
    if isinstance(p, str) and p.isascii() and p.isdigit() and not p.startswith("0"):
        return int(p)
    return None


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: isinstance(v, str) and v in choices


# field -> (check, what is expected, as the error message says it)
_CHECKS: dict[str, tuple[Check, str]] = {
    "schema_version": (lambda v: _is_int(v) and v == SCHEMA_VERSION, f"{SCHEMA_VERSION}"),
    "source": (_is_str, "a non-empty string"),
    "content_sha256": (
        _opt(lambda v: isinstance(v, str) and _SHA_RE.fullmatch(v) is not None),
        "64 lowercase hex digits or null",
    ),
    "page": (_opt(lambda v: _is_int(v, 1)), "an integer >= 1 or null"),
    "page_count": (_opt(_is_int), "an integer >= 0 or null"),
    "task": (_one_of(TASKS), " | ".join(TASKS)),
    "question": (_opt(lambda v: isinstance(v, str)), "a string or null"),
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "text": (lambda v: isinstance(v, str), 'a string ("" when none)'),
    "status": (_one_of(STATUSES), " | ".join(STATUSES)),
    "error": (_opt(_is_error), '{"code": lowercase_code, "message": string} or null'),
    "flags": (_is_flags, "a list of distinct flags from " + ", ".join(FLAGS)),
    "hd_setting": (
        lambda v: isinstance(v, str) and _HD_RE.fullmatch(v) is not None,
        '"auto" or a whole number >= 1 as a string',
    ),
    "tier": (_opt(lambda v: _is_int(v, 1)), "an integer >= 1 or null"),
    "grid": (_opt(_is_pair), "[rows, cols] (integers >= 1) or null"),
    "image_tokens": (_opt(_is_int), "an integer >= 0 or null"),
    "native_size": (_opt(_is_pair), "[height, width] (integers >= 1) or null"),
    "render_dpi": (_opt(lambda v: _is_num(v, positive=True)), "a number > 0 or null"),
    "model": (_is_str, "a non-empty string"),
    "model_revision": (_opt(_is_str), "a non-empty string or null"),
    "precision": (_opt(_one_of(PRECISIONS)), " | ".join(PRECISIONS) + " | null"),
    "device": (_is_str, "a non-empty string"),
    "timings": (
        _is_timings,
        "{" + ", ".join(TIMING_KEYS) + "} with numbers >= 0 or null (tokens an integer)",
    ),
    "created_at": (_is_time, "ISO-8601 UTC like 2026-01-31T12:00:00Z"),
    "worker": (_opt(_is_str), "a non-empty string or null (optional)"),
    "num_beams": (_opt(lambda v: _is_int(v, 2)), "a whole number >= 2 (optional)"),
    "screening": (
        _opt(_is_screening),
        '{"tier": int >= 1, "scores": {"page": finite number, ...}, "chosen": [pages scored]}'
        " (optional)",
    ),
}
assert set(_CHECKS) == _ALL_FIELD_SET, "every field has exactly one check"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_record(d: Mapping[str, Any]) -> None:
    """Check a parsed record against the schema; ValueError lists every problem by key."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a record must be a JSON object, got {type(d).__name__}")
    missing = [k for k in FIELDS if k not in d]
    extra = [str(k) for k in d if k not in _ALL_FIELD_SET]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if extra:
            parts.append("unexpected keys: " + ", ".join(extra))
        raise ValueError("; ".join(parts))
    problems = [
        f"{name}: expected {expected}, got {_show(d.get(name))}"
        for name, (check, expected) in _CHECKS.items()
        if not check(d.get(name))
    ]
    if not problems:
        problems = _cross_checks(d)
    if problems:
        raise ValueError("; ".join(problems))


def _cross_checks(d: Mapping[str, Any]) -> list[str]:
    problems = []
    if d["status"] == "ok":
        if d["error"] is not None:
            problems.append('error: must be null when status is "ok"')
        if d["page"] is None or d["content_sha256"] is None:
            problems.append('page and content_sha256: required when status is "ok"')
    elif d["error"] is None:
        problems.append('error: required when status is "error"')
    if d["page"] is not None and d["page_count"] is not None and d["page"] > d["page_count"]:
        problems.append(f"page: {d['page']} is beyond page_count {d['page_count']}")
    if "blank" in d["flags"] and (d["status"] != "ok" or d["text"] != ""):
        problems.append('flags: a "blank" page has status "ok" and text ""')
    if d["task"] == "ask" and not d["question"]:
        problems.append('question: required when task is "ask"')
    return problems


def validate_line(line: str | bytes) -> PageRecord:
    """Check one output line exactly as written: one line, valid JSON, keys in schema order."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    body = line[:-1] if line.endswith("\n") else line
    if "\n" in body or "\r" in body:
        raise ValueError("a record must be a single line")
    d = _loads(body)
    if tuple(d) != FIELDS + tuple(k for k in OPTIONAL_FIELDS if k in d):
        raise ValueError(f"keys out of schema order: {', '.join(map(str, d))}")
    return PageRecord.from_dict(d)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> dict[str, Any]:
    d = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(d, dict):
        raise ValueError(f"a record must be a JSON object, got {type(d).__name__}")
    validate_record(d)
    return d


# --- resume keys and state ---------------------------------------------------------------------


class ResumeKey(NamedTuple):
    """What makes two records the same job; a record with an equal key is not done twice."""

    content: str  # content_sha256, or "source:<path>" when the bytes could not be read
    page: int | None  # None: an error about the whole file
    task: str
    prompt: str
    hd_setting: str
    model: str  # model_revision when known, else the model id or path
    beams: int = 1  # beam search changes the answer: a different job

    def document(self) -> ResumeKey:
        """The key of a whole-file error for the same document and job."""
        return self._replace(page=None)


def make_key(
    *,
    content_sha256: str | None,
    source: str,
    page: int | None,
    task: str,
    prompt: str,
    hd_setting: str,
    model: str,
    model_revision: str | None,
    num_beams: int | None = None,
) -> ResumeKey:
    """The resume key of a job, computed before running it (the same rule as ``resume_key``)."""
    return ResumeKey(
        content=content_sha256 if content_sha256 is not None else f"source:{source}",
        page=page,
        task=task,
        prompt=prompt,
        hd_setting=hd_setting,
        model=model_revision if model_revision is not None else model,
        beams=num_beams or 1,
    )


def resume_key(rec: PageRecord | Mapping[str, Any]) -> ResumeKey:
    """The resume key of a record (or of a validated record dict)."""
    if isinstance(rec, Mapping):
        get = rec.__getitem__
        beams = rec.get("num_beams")
    else:
        get = rec.__getattribute__
        beams = rec.num_beams
    return make_key(
        content_sha256=get("content_sha256"),
        source=get("source"),
        page=get("page"),
        task=get("task"),
        prompt=get("prompt"),
        hd_setting=get("hd_setting"),
        model=get("model"),
        model_revision=get("model_revision"),
        num_beams=beams,
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
    _check_output(path)
    state = ResumeState(path=path)
    if not path.exists():
        return state
    scan = _read_state(path, state)
    if scan.tail_problem is not None:
        _truncate(path, scan.good_end, expected_size=scan.size)
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
    return JsonlWriter._adopt(path, fd, fsync=fsync), state


def open_locked_scan(
    path: Path, scan: Callable[[Path], _Scan], *, fsync: bool = True
) -> tuple[int, int]:
    """Lock ``path`` (created if missing), run ``scan`` over it, cut a torn tail under the lock:
    (the locked append descriptor, bytes cut). For any ixcdoc JSONL (records, evaluation)."""
    _check_output(path)
    existed = path.exists()
    fd = _open_locked(path)
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


def _read_state(path: Path, state: ResumeState) -> _Scan:
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

    return _scan(path, on_record)


def latest_records(path: PathLike) -> list[PageRecord]:
    """The last record per resume key, in first-seen order; a torn final line is ignored."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such output file", code="not_found")
    _check_output(path)
    latest: dict[ResumeKey, dict[str, Any]] = {}

    def on_record(d: dict[str, Any]) -> None:
        key = resume_key(d)
        latest[key] = d  # an existing key keeps its first-seen position
        if key.page is not None:
            latest.pop(key.document(), None)

    _scan(path, on_record)
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
    directory.mkdir(parents=True, exist_ok=True)
    return _open_locked(directory / SHARD_LOCK)


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


@dataclass
class _Scan:
    size: int  # bytes read
    good_end: int  # offset just past the last valid, newline-terminated record
    tail_problem: str | None  # why the bytes after good_end may be cut, when there are any


def _scan(
    path: Path,
    on_record: Callable[[dict[str, Any]], None],
    *,
    parse: Callable[[str], dict[str, Any]] | None = None,
    header: bytes = RECORD_HEADER,
) -> _Scan:
    """Stream the records of a JSONL file; only a torn final record may follow the last one.

    Everything after the last complete record must be what an interrupted append leaves: one
    final segment without a newline that is (a prefix of) an ixcdoc record line, or NUL bytes
    (a crash after the file size, but not the data, reached the disk). Any other line, in the
    middle or at the end, raises: a file that is not ixcdoc's is never modified.
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
                d = (parse or _loads)(raw.decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
                if not records:
                    _not_ours(path, lineno, _what_it_is(e))
                _corrupt(path, lineno, str(e))
            on_record(d)
            records += 1
            good_end = offset
    return _Scan(size=offset, good_end=good_end, tail_problem=tail)


def _is_torn_record(raw: bytes, *, after_records: bool, header: bytes = RECORD_HEADER) -> bool:
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


def _check_output(path: Path) -> None:
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


_check_parent = _check_output  # the old name, still imported by ixcdoc.evaluation.records


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


def _truncate(path: Path, size: int, *, expected_size: int) -> None:
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
    def _adopt(cls, path: Path, fd: int, *, fsync: bool) -> JsonlWriter:
        """A writer over an already opened and locked append descriptor (``open_output``)."""
        w = cls.__new__(cls)
        w.count, w._fd, w._stream, w._closed, w._broken = 0, fd, None, False, None
        w.path, w._fsync, w._ascii = path, fsync, False
        return w

    def write(self, rec: PageRecord) -> None:
        """Write one record as one complete line, then flush (and fsync a file)."""
        if not isinstance(rec, PageRecord):
            raise TypeError(f"JsonlWriter.write takes a PageRecord, got {type(rec).__name__}")
        if self._closed:
            raise ValueError("write to a closed JsonlWriter")
        if self._broken is not None:
            raise RecordsError(self._broken, code="write_failed")
        if self._stream is not None:
            self._stream.write(rec.to_json(ensure_ascii=self._ascii) + "\n")
            self._stream.flush()
        else:
            data = (rec.to_json() + "\n").encode("utf-8")
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


def _open_locked(path: Path) -> int:
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
    _check_output(path)
    existed = path.exists()
    fd = _open_locked(path)
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


__all__ = [
    "FIELDS",
    "FLAGS",
    "MAX_LINE_BYTES",
    "OPTIONAL_FIELDS",
    "PRECISIONS",
    "RECORD_HEADER",
    "SCHEMA_VERSION",
    "STATUSES",
    "TASKS",
    "ErrorInfo",
    "JsonlWriter",
    "PageRecord",
    "RecordsError",
    "ResumeKey",
    "ResumeState",
    "Timings",
    "latest_records",
    "load_existing",
    "load_shards",
    "make_key",
    "merge_shards",
    "resume_key",
    "shard_paths",
    "utc_now",
    "validate_line",
    "validate_record",
]
