"""The record schema: one JSON object per page and per line, its keys, their order and types
(the documented contract, docs/output.md), building and checking a record, and the resume key
that makes two records the same job.

Pure standard library. The file these records live in (appended, locked, fsynced, a torn tail
repaired) is ``jsonl``'s; what a run's output already holds is ``resume``'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ixcdoc.errors import IxcdocError
from ixcdoc.tasks import PRESETS

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
TIMING_KEYS = (
    "render_ms",
    "preprocess_ms",
    "prefill_ms",
    "decode_ms",
    "tokens",
    "draft_tokens",
    "accepted_tokens",
)
COUNT_KEYS = ("tokens", "draft_tokens", "accepted_tokens")  # integers; the rest milliseconds
# Timing keys a record written before speculative decoding lacks (read as null).
LATER_TIMING_KEYS = ("draft_tokens", "accepted_tokens")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what jq's fromdateiso8601 reads

# Every line the writer makes starts with these bytes: the only thing a torn tail may look like.
RECORD_HEADER = f'{{"schema_version":{SCHEMA_VERSION},"source":'.encode()


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
    """Per-page timings in milliseconds (None: the stage did not run), generated tokens, and of
    speculative decoding the draft's tokens (the page's text layer; 0 without one) and the
    generated tokens the model accepted from proposals instead of decoding each in a step."""

    render_ms: float | None = None
    preprocess_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    tokens: int | None = None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None


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
        fix(self, "timings", _floats(timings, COUNT_KEYS))
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
    if not isinstance(v, Mapping):
        return False
    keys = set(v)
    if keys != set(TIMING_KEYS) and keys != set(TIMING_KEYS) - set(LATER_TIMING_KEYS):
        return False
    ms_ok = all(v[k] is None or _is_num(v[k]) for k in TIMING_KEYS if k not in COUNT_KEYS)
    counts_ok = all(v.get(k) is None or _is_int(v[k]) for k in COUNT_KEYS)
    return ms_ok and counts_ok


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
        "{"
        + ", ".join(TIMING_KEYS)
        + "} with numbers >= 0 or null (the counts integers; the last two may be absent)",
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
    written, accepted = d["timings"]["tokens"], d["timings"].get("accepted_tokens")
    if accepted is not None and (written is None or accepted > written):
        problems.append(f"timings: accepted_tokens {accepted} is more than tokens {written}")
    return problems


def validate_line(line: str | bytes) -> PageRecord:
    """Check one output line exactly as written: one line, valid JSON, keys in schema order."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    body = line[:-1] if line.endswith("\n") else line
    if "\n" in body or "\r" in body:
        raise ValueError("a record must be a single line")
    d = parse_record(body)
    if tuple(d) != FIELDS + tuple(k for k in OPTIONAL_FIELDS if k in d):
        raise ValueError(f"keys out of schema order: {', '.join(map(str, d))}")
    return PageRecord.from_dict(d)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_record(text: str) -> dict[str, Any]:
    """One JSON line as a validated record dict (ValueError names what is wrong)."""
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
