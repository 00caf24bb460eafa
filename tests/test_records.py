"""Output records: schema, JSONL writer, torn-line repair and resume semantics."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from ixcdoc import records
from ixcdoc.errors import EXIT_FATAL, InputError
from ixcdoc.records import (
    FIELDS,
    SCHEMA_VERSION,
    ErrorInfo,
    JsonlWriter,
    PageRecord,
    RecordsError,
    ResumeState,
    Screening,
    Timings,
    jsonl,
    latest_records,
    load_existing,
    make_key,
    resume_key,
    utc_now,
    validate_line,
    validate_record,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def make(**over: Any) -> PageRecord:
    """A valid ok record for page 1 of a 3-page PDF; keyword arguments override fields."""
    base: dict[str, Any] = dict(
        source="scans/a.pdf",
        content_sha256=SHA_A,
        page=1,
        page_count=3,
        task="extract",
        question=None,
        prompt="Transcribe the page as markdown.",
        text="Total: 12,50 €\n\n| a | b |",
        status="ok",
        flags=(),
        hd_setting="auto",
        tier=25,
        grid=(5, 5),
        image_tokens=14_000,
        native_size=(3508, 2480),
        render_dpi=300.0,
        model="internlm/internlm-xcomposer2-4khd-7b",
        model_revision="0123abcd",
        precision="bf16",
        device="cuda:0",
        timings=Timings(
            render_ms=41.5,
            preprocess_ms=12.0,
            prefill_ms=900.0,
            decode_ms=2000.0,
            tokens=120,
            draft_tokens=90,
            accepted_tokens=61,
        ),
        created_at="2026-01-31T12:00:00Z",
    )
    base.update(over)
    return PageRecord(**base)


def failed(**over: Any) -> PageRecord:
    """An error record (out of memory) for the same job as ``make()``."""
    fields: dict[str, Any] = dict(
        status="error",
        text="",
        error=ErrorInfo("oom", "scans/a.pdf page 1: out of GPU memory at HD9"),
        flags=("tier_fallback",),
    )
    fields.update(over)
    return make(**fields)


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- schema ------------------------------------------------------------------------------------


def test_round_trip_through_one_json_line() -> None:
    rec = make(text="naïve “quotes” 中文 line\nbreak", render_dpi=144)
    line = rec.to_json()
    assert "\n" not in line
    assert "中文" in line  # not \u-escaped
    d = json.loads(line)
    assert list(d) == list(FIELDS)
    assert d["grid"] == [5, 5] and d["native_size"] == [3508, 2480]
    assert d["timings"] == {
        "render_ms": 41.5,
        "preprocess_ms": 12.0,
        "prefill_ms": 900.0,
        "decode_ms": 2000.0,
        "tokens": 120,
        "draft_tokens": 90,
        "accepted_tokens": 61,
    }
    back = PageRecord.from_dict(d)
    assert back == rec
    assert back.to_json() == line
    assert validate_line(line + "\n") == rec


def test_key_order_is_the_documented_order() -> None:
    assert FIELDS[:3] == ("schema_version", "source", "content_sha256")
    assert FIELDS[-3:] == ("device", "timings", "created_at")
    assert len(FIELDS) == 24
    assert make().schema_version == SCHEMA_VERSION == 1


def test_error_record_round_trips() -> None:
    rec = failed()
    d = json.loads(rec.to_json())
    assert d["error"] == {"code": "oom", "message": "scans/a.pdf page 1: out of GPU memory at HD9"}
    assert d["flags"] == ["tier_fallback"]
    assert PageRecord.from_dict(d) == rec


def test_line_separators_and_lone_surrogates_are_escaped() -> None:
    rec = make(text="a\u2028b\u2029c\x85d\ud800e")
    line = rec.to_json()
    assert len(line.splitlines()) == 1
    line.encode("utf-8")  # would raise on a raw lone surrogate
    assert json.loads(line)["text"] == rec.text


def test_missing_key_is_named() -> None:
    d = make().to_dict()
    del d["page_count"]
    del d["device"]
    with pytest.raises(ValueError, match="missing keys: page_count, device"):
        PageRecord.from_dict(d)


def test_extra_key_is_named() -> None:
    d = make().to_dict()
    d["answer"] = "x"
    with pytest.raises(ValueError, match="unexpected keys: answer"):
        validate_record(d)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("page", "1"),
        ("page", True),
        ("page", 0),
        ("tier", 2.5),
        ("grid", [5]),
        ("native_size", [0, 10]),
        ("flags", ["blurry"]),
        ("flags", ["repetition", "repetition"]),
        ("hd_setting", 25),
        ("hd_setting", "HD25"),
        ("precision", "int8"),
        ("task", "summarize"),
        ("status", "skipped"),
        ("content_sha256", "ABC"),
        ("render_dpi", float("nan")),
        ("timings", {"render_ms": 1.0}),
        ("timings", {**dict.fromkeys(records.TIMING_KEYS), "tokens": 1.5}),
        ("timings", {**dict.fromkeys(records.TIMING_KEYS), "draft_tokens": 2.0}),
        ("timings", {**dict.fromkeys(records.TIMING_KEYS), "accepted_tokens": -1}),
        # the two draft counts come together or not at all
        ("timings", {k: None for k in records.TIMING_KEYS if k != "accepted_tokens"}),
        ("created_at", "2026-01-31 12:00:00"),
        ("created_at", "2026-13-31T12:00:00Z"),
        ("schema_version", 2),
        ("model", ""),
    ],
)
def test_wrong_type_is_named(key: str, value: Any) -> None:
    d = make().to_dict()
    d[key] = value
    with pytest.raises(ValueError, match=rf"^{key}: expected"):
        validate_record(d)


def test_records_written_before_draft_counts_still_read() -> None:
    """A line from before speculative decoding (timings without ``draft_tokens`` and
    ``accepted_tokens``) reads, with both null; a new record always writes both."""
    d = make().to_dict()
    old = {k: v for k, v in d["timings"].items() if k not in ("draft_tokens", "accepted_tokens")}
    line = json.dumps({**d, "timings": old}, ensure_ascii=False, separators=(",", ":"))
    rec = validate_line(line)
    assert rec.timings.tokens == 120
    assert rec.timings.draft_tokens is None and rec.timings.accepted_tokens is None
    assert json.loads(rec.to_json())["timings"]["accepted_tokens"] is None


def test_more_tokens_accepted_than_generated_is_refused() -> None:
    # accepted tokens are generated tokens; a draft may be longer or shorter than the output
    assert make(timings=dataclasses.replace(make().timings, draft_tokens=0)).timings.tokens
    timings = dataclasses.replace(make().timings, tokens=60)
    with pytest.raises(ValueError, match="accepted_tokens 61 is more than tokens 60"):
        make(timings=timings)
    d = make().to_dict()
    d["timings"] = {**d["timings"], "tokens": None}
    with pytest.raises(ValueError, match="accepted_tokens 61 is more than tokens None"):
        validate_record(d)


def test_every_problem_is_listed() -> None:
    d = make().to_dict()
    d["page"] = "1"
    d["device"] = None
    with pytest.raises(ValueError, match=r"page: .*; device: "):
        validate_record(d)


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        (dict(status="ok", error={"code": "oom", "message": "x"}), "must be null"),
        (dict(status="error", error=None), "required when status"),
        (dict(page=4, page_count=3), "beyond page_count"),
        (dict(flags=["blank"], text="invented text"), "blank"),
        (dict(task="ask", question=None), "question"),
        (dict(page=None), 'required when status is "ok"'),
    ],
)
def test_inconsistent_fields_are_rejected(over: dict[str, Any], problem: str) -> None:
    d = {**make().to_dict(), **over}
    with pytest.raises(ValueError, match=problem):
        validate_record(d)
    with pytest.raises(ValueError, match=problem):
        make(**over)  # the constructor refuses to build it, so no writer can write it


def test_blank_page_is_ok_with_flag() -> None:
    rec = make(text="", flags=["blank"], tier=None, grid=None, image_tokens=None)
    assert rec.flags == ("blank",)
    assert validate_line(rec.to_json()) == rec


def test_whole_file_error_has_no_page() -> None:
    rec = make(
        source="scans/locked.pdf",
        page=None,
        page_count=None,
        status="error",
        text="",
        error=ErrorInfo.from_exception(
            InputError("scans/locked.pdf", "needs a password", code="password_required")
        ),
        tier=None,
        grid=None,
        image_tokens=None,
        native_size=None,
        render_dpi=None,
        timings=Timings(),
    )
    assert rec.error == ErrorInfo("password_required", "scans/locked.pdf: needs a password")
    assert validate_line(rec.to_json()) == rec


def test_validate_line_checks_key_order_and_single_line() -> None:
    d = make().to_dict()
    shuffled = dict(reversed(list(d.items())))
    validate_record(shuffled)  # order is not a property of the parsed object
    with pytest.raises(ValueError, match="order"):
        validate_line(json.dumps(shuffled))
    with pytest.raises(ValueError, match="single line"):
        validate_line(json.dumps(d, indent=1))
    with pytest.raises(ValueError, match="NaN"):
        validate_line(make().to_json().replace('"render_dpi":300.0', '"render_dpi":NaN'))


def test_utc_now_is_valid_created_at() -> None:
    rec = dataclasses.replace(make(), created_at=utc_now())
    assert rec.created_at.endswith("Z")


# --- resume keys -------------------------------------------------------------------------------


def test_resume_key_fields() -> None:
    rec = make()
    key = resume_key(rec)
    assert key == (SHA_A, 1, "extract", rec.prompt, "auto", "0123abcd", 1)  # 1 beam: greedy
    assert key == resume_key(rec.to_dict())
    assert key == make_key(
        content_sha256=SHA_A,
        source="elsewhere/copy.pdf",  # the source path is not part of the key
        page=1,
        task="extract",
        prompt=rec.prompt,
        hd_setting="auto",
        model="some/other-id",  # the revision identifies the weights
        model_revision="0123abcd",
    )
    assert resume_key(make(model_revision=None)).model == "internlm/internlm-xcomposer2-4khd-7b"
    unreadable = make(content_sha256=None, page=None, status="error", error=ErrorInfo("x", "y"))
    assert resume_key(unreadable).content == "source:scans/a.pdf"


def ask_record(**over: Any) -> PageRecord:
    """An ``ask`` record of page 2, chosen by screening the document's three pages."""
    screening = {"tier": 4, "scores": {"1": -0.4, "2": 1.3, "3": 0.25}, "chosen": [2]}
    fields: dict[str, Any] = dict(
        page=2, task="ask", question="Who signed?", prompt="Who signed?", screening=screening
    )
    fields.update(over)
    return make(**fields)


def test_screening_round_trips_as_the_optional_last_key() -> None:
    rec = ask_record()
    assert rec.screening == Screening(tier=4, scores={1: -0.4, 2: 1.3, 3: 0.25}, chosen=(2,))
    line = rec.to_json()
    d = json.loads(line)
    assert list(d) == [*FIELDS, "screening"]
    assert d["screening"] == {"tier": 4, "scores": {"1": -0.4, "2": 1.3, "3": 0.25}, "chosen": [2]}
    back = validate_line(line + "\n")
    assert back == rec and back.to_json() == line and hash(back) == hash(rec)
    # scores keep 6 decimals, so a record read back equals the one written
    fine = ask_record(screening=Screening(4, {1: 0.1234567891, 2: 2.0}, (2,)))
    assert fine.screening is not None and fine.screening.scores[1] == 0.123457
    assert validate_line(fine.to_json()) == fine
    # after worker and num_beams, in that order
    beams = json.loads(ask_record(num_beams=3).to_json())
    assert list(beams)[-2:] == ["num_beams", "screening"]


def test_records_without_screening_are_unchanged() -> None:
    plain = ask_record(screening=None)
    assert "screening" not in json.loads(plain.to_json())
    assert validate_line(plain.to_json()) == plain
    # the resume key leaves the screening out: a file written before it resumes unchanged
    assert resume_key(ask_record()) == resume_key(plain)


@pytest.mark.parametrize(
    "bad",
    [
        {"tier": 0, "scores": {"1": 0.5}, "chosen": [1]},
        {"tier": 4, "scores": {}, "chosen": [1]},
        {"tier": 4, "scores": {"0": 0.5}, "chosen": [1]},
        {"tier": 4, "scores": {"x": 0.5}, "chosen": [1]},
        {"tier": 4, "scores": {"1": "high"}, "chosen": [1]},
        {"tier": 4, "scores": {"1": 0.5}, "chosen": [2]},  # chosen but never scored
        {"tier": 4, "scores": {"1": 0.5}, "chosen": []},
        {"tier": 4, "scores": {"1": 0.5}, "chosen": [1, 1]},
        {"tier": 4, "scores": {"1": 0.5}},
        [1, 2],
    ],
)
def test_a_bad_screening_is_named(bad: Any) -> None:
    d = ask_record().to_dict()
    d["screening"] = bad
    with pytest.raises(ValueError, match=r"^screening: expected"):
        validate_record(d)
    with pytest.raises(ValueError, match=r"screening: expected"):
        validate_line(json.dumps(d))


def test_resume_skip_logic() -> None:
    state = ResumeState()
    ok, err = make(page=1), failed(page=2)
    state.add(ok)
    state.add(err)
    assert state.should_skip(resume_key(ok), redo_failed=False)
    assert state.should_skip(resume_key(ok), redo_failed=True)
    assert state.should_skip(resume_key(err), redo_failed=False)
    assert not state.should_skip(resume_key(err), redo_failed=True)
    for changed in (
        make(prompt="Transcribe the page as plain text."),
        make(hd_setting="55"),
        make(model_revision="fedcba98"),
        make(content_sha256=SHA_B),
        make(page=3),
        make(task="chart"),
    ):
        assert not state.should_skip(resume_key(changed), redo_failed=False), changed


def test_latest_record_per_key_wins() -> None:
    state = ResumeState()
    state.add(failed())
    state.add(make())
    assert resume_key(make()) in state.done and not state.failed
    state.add(failed())
    assert resume_key(make()) not in state.done
    assert state.failed[resume_key(make())] == failed()
    assert state.count == 3


# --- writer and loader -------------------------------------------------------------------------


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    state = load_existing(tmp_path / "out.jsonl")
    assert (state.done, state.failed, state.count, state.repaired_bytes) == (set(), {}, 0, 0)
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "nope" / "out.jsonl"
    for action in (load_existing, JsonlWriter):
        with pytest.raises(RecordsError, match=r"directory .*nope does not exist") as info:
            action(out)
        assert info.value.exit_code == EXIT_FATAL
    with pytest.raises(RecordsError, match="is a directory"):
        JsonlWriter(tmp_path)


def test_writer_appends_valid_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        w.write(make(page=1))
        w.write(failed(page=2))
    with JsonlWriter(out) as w:  # a second run appends
        w.write(make(page=3))
        assert w.count == 1
    got = [validate_line(line) for line in lines_of(out)]
    assert [r.page for r in got] == [1, 2, 3]
    assert out.read_bytes().endswith(b"}\n")
    state = load_existing(out)
    assert state.count == 3 and state.repaired_bytes == 0
    assert state.done == {resume_key(make(page=1)), resume_key(make(page=3))}
    assert list(state.failed) == [resume_key(failed(page=2))]


def test_fsync_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync
    with JsonlWriter(out) as w:
        monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
        for page in (1, 2, 3):
            w.write(make(page=page))
            assert len(synced) == page  # durable before write() returns
            assert len(lines_of(out)) == page
    assert len(set(synced)) == 1
    synced.clear()
    with JsonlWriter(out, fsync=False) as w:
        w.write(make(page=3))
    assert synced == []


def test_stdout_mode_writes_one_line_per_record(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    with JsonlWriter("-") as w:
        w.write(make(page=1))
        w.write(failed(page=2))
        assert capsys.readouterr().out.count("\n") == 2  # flushed per line, not at close
        w.write(make(page=3, text="é"))
    out = capsys.readouterr().out
    assert [validate_line(line).page for line in out.splitlines()] == [3]
    assert "é" in out
    assert synced == []


def test_stream_is_flushed_per_line() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")  # buffers until flushed
    w = JsonlWriter(stream)
    for page in (1, 2):
        w.write(make(page=page))
        assert raw.getvalue().count(b"\n") == page
    w.close()
    assert not stream.closed  # the caller's stream stays open


def test_ascii_stream_gets_escaped_json() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    with JsonlWriter(stream) as w:
        w.write(make(text="中文 é"))
    line = raw.getvalue().decode("ascii")
    assert "\\u4e2d" in line
    assert validate_line(line).text == "中文 é"


def torn_file(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """Three good records, then the first half of a fourth (a crash mid-write)."""
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        for page in (1, 2, 3):
            w.write(make(page=page, page_count=4))
    good = out.read_bytes()
    torn = make(page=4, page_count=4).to_json().encode("utf-8")[:57]
    with open(out, "ab") as f:
        f.write(torn)
    return out, good, torn


def test_torn_last_line_is_repaired(tmp_path: Path) -> None:
    out, good, torn = torn_file(tmp_path)
    state = load_existing(out)
    assert state.repaired_bytes == len(torn)
    assert out.read_bytes() == good
    assert state.count == 3
    assert resume_key(make(page=4, page_count=4)) not in state.done
    assert not state.should_skip(resume_key(make(page=4, page_count=4)), redo_failed=False)
    with JsonlWriter(out) as w:
        w.write(make(page=4, page_count=4))
    assert [validate_line(line).page for line in lines_of(out)] == [1, 2, 3, 4]
    assert load_existing(out).repaired_bytes == 0


def test_writer_refuses_to_append_after_a_torn_line(tmp_path: Path) -> None:
    out, _, _ = torn_file(tmp_path)
    before = out.read_bytes()
    with pytest.raises(RecordsError, match="incomplete line"):
        JsonlWriter(out)
    assert out.read_bytes() == before


def test_complete_but_unterminated_last_line_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = make(page=1).to_json() + "\n"
    out.write_text(first + make(page=2).to_json(), encoding="utf-8")
    state = load_existing(out)
    assert state.count == 1 and state.repaired_bytes == len(make(page=2).to_json().encode())
    assert out.read_text(encoding="utf-8") == first


def test_invalid_terminated_last_line_is_repaired(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = make(page=1).to_json() + "\n"
    out.write_bytes(first.encode() + b"\x00\x00\x00\n\n")  # zero-filled block after a crash
    state = load_existing(out)
    assert state.count == 1 and state.repaired_bytes == 5
    assert out.read_text(encoding="utf-8") == first


def test_corrupt_middle_line_raises_naming_file_and_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    body = "\n".join(
        [make(page=1).to_json(), '{"schema_version": 1, "source"', make(page=3).to_json()]
    )
    out.write_text(body + "\n", encoding="utf-8")
    before = out.read_bytes()
    with pytest.raises(RecordsError, match=r"out\.jsonl line 2: not a valid record") as info:
        load_existing(out)
    assert info.value.code == "corrupt_output"
    with pytest.raises(RecordsError, match="line 2"):
        latest_records(out)
    assert out.read_bytes() == before  # nothing is dropped silently


def test_invalid_record_before_a_torn_tail_is_not_repaired(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    bad = make(page=2).to_dict()
    bad["page"] = "two"
    out.write_text(
        make(page=1).to_json() + "\n" + json.dumps(bad) + "\n" + '{"sche', encoding="utf-8"
    )
    with pytest.raises(RecordsError, match=r"line 2: .*page: expected"):
        load_existing(out)


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(
        "\n" + make(page=1).to_json() + "\n\n" + make(page=2).to_json() + "\n", encoding="utf-8"
    )
    state = load_existing(out)
    assert state.count == 2 and state.repaired_bytes == 0


def run_batch(out: Path, pages: range, *, redo_failed: bool, crash_after: int | None = None) -> int:
    """A miniature `ixcdoc extract -o out`: odd pages fail the first time they are tried."""
    state = load_existing(out)
    written = 0
    with JsonlWriter(out) as w:
        for page in pages:
            job = make(page=page, page_count=10)
            key = resume_key(job)
            if state.should_skip(key, redo_failed=redo_failed):
                continue
            if crash_after is not None and written == crash_after:
                with open(out, "ab") as f:  # the process dies halfway through this line
                    f.write(job.to_json().encode()[:40])
                return written
            rec = failed(page=page, page_count=10) if page % 2 and key not in state.failed else job
            w.write(rec)
            state.add(rec)
            written += 1
    return written


def test_resuming_never_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert run_batch(out, range(1, 11), redo_failed=False, crash_after=4) == 4
    assert run_batch(out, range(1, 11), redo_failed=False) == 6
    assert run_batch(out, range(1, 11), redo_failed=False) == 0
    keys = [resume_key(validate_line(line)) for line in lines_of(out)]
    assert len(keys) == len(set(keys)) == 10
    state = load_existing(out)
    assert len(state.done) == 5 and len(state.failed) == 5
    # --redo-failed appends a new record for each failed key; the latest wins.
    assert run_batch(out, range(1, 11), redo_failed=True) == 5
    assert len(lines_of(out)) == 15
    state = load_existing(out)
    assert len(state.done) == 10 and not state.failed
    latest = latest_records(out)
    assert [r.page for r in latest] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # first-seen order
    assert all(r.status == "ok" for r in latest)


def test_latest_records_ignores_torn_tail_without_repairing(tmp_path: Path) -> None:
    out, good, torn = torn_file(tmp_path)
    assert [r.page for r in latest_records(out)] == [1, 2, 3]
    assert out.read_bytes() == good + torn  # readers never modify the file
    with pytest.raises(RecordsError, match="no such output file"):
        latest_records(tmp_path / "missing.jsonl")


def test_whole_file_error_is_superseded_by_page_records(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    locked = make(page=None, page_count=None, status="error", error=ErrorInfo("x", "locked"))
    with JsonlWriter(out) as w:
        w.write(locked)
        state = load_existing(out)
        assert state.should_skip(resume_key(locked), redo_failed=False)
        w.write(make(page=1))  # opened with --password this time
    state = load_existing(out)
    assert not state.failed and state.done == {resume_key(make(page=1))}
    assert latest_records(out) == [make(page=1)]


def test_failed_write_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with JsonlWriter(out) as w:
        w.write(make(page=1))
        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(RecordsError, match="No space left") as info:
            w.write(make(page=2))
        monkeypatch.setattr(os, "write", real_write)
        assert info.value.code == "write_failed"
        w.write(make(page=3))
    assert [validate_line(line).page for line in lines_of(out)] == [1, 3]


@pytest.mark.skipif(jsonl.fcntl is None, reason="no advisory locks on this platform")
def test_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlWriter(out) as w:
        with pytest.raises(RecordsError, match="another process") as info:
            JsonlWriter(out)
        assert info.value.code == "output_locked"
        w.write(make())
    with JsonlWriter(out) as w:  # released on close
        w.write(make(page=2))
    assert len(lines_of(out)) == 2


def test_closed_writer_refuses_writes(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "out.jsonl")
    w.close()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(make())
    with pytest.raises(TypeError, match="PageRecord"):
        JsonlWriter(io.StringIO()).write(make().to_dict())  # type: ignore[arg-type]


def test_examples_in_docs_are_valid_lines() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "output.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)\n```", doc, flags=re.S)
    assert len(blocks) == 4
    got = [validate_line(block) for block in blocks]
    assert [(r.status, r.flags) for r in got] == [
        ("ok", ()),
        ("error", ("tier_fallback",)),
        ("ok", ("blank",)),
        ("error", ()),
    ]
    # The prompt is the real preset: a reader who keys on it (the resume key does) matches.
    from ixcdoc.tasks import EXTRACT

    assert {r.prompt for r in got} == {EXTRACT.prompt}
    for name in FIELDS:
        assert f"| `{name}` |" in doc, f"{name} is missing from the schema table"


# --- files that are not ixcdoc's, and outputs that are not files (issue 9, items 1 and 4) ------


@pytest.mark.parametrize(
    "content",
    [
        b'{"name": "my-project", "version": "1.0"}\n',  # a complete line that is not a record
        b"shopping list\nmilk",  # a notes file without a final newline
        b"{",  # one byte of what could be a header: proves nothing on its own
        b"\x00\x00\x00\n",  # NUL bytes with no record before them
    ],
)
def test_a_file_that_is_not_ixcdoc_output_is_refused_untouched(
    tmp_path: Path, content: bytes
) -> None:
    out = tmp_path / "package.json"
    out.write_bytes(content)
    with pytest.raises(RecordsError, match=r"package\.json is not an ixcdoc output file") as info:
        load_existing(out)
    assert info.value.code == "not_records" and info.value.exit_code == EXIT_FATAL
    assert "\n" not in str(info.value)
    assert out.read_bytes() == content


def test_a_complete_last_line_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    content = (make(page=1).to_json() + "\n" + '{"name": "x"}\n').encode()
    out.write_bytes(content)
    with pytest.raises(RecordsError, match=r"out\.jsonl line 2: not a valid record") as info:
        load_existing(out)
    assert info.value.code == "corrupt_output"
    assert out.read_bytes() == content


def test_an_unterminated_last_line_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    content = (make(page=1).to_json() + "\n" + "my notes").encode()
    out.write_bytes(content)
    with pytest.raises(RecordsError, match="line 2: not a valid record"):
        load_existing(out)
    assert out.read_bytes() == content


def test_empty_file_is_an_empty_state(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    state = load_existing(out)
    assert state.count == 0 and state.repaired_bytes == 0
    assert out.read_bytes() == b""


def test_a_file_whose_only_line_is_a_torn_record_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    torn = make(page=1).to_json().encode()[:45]  # past the header: ixcdoc wrote it
    out.write_bytes(torn)
    state = load_existing(out)
    assert state.count == 0 and state.repaired_bytes == 45
    assert out.read_bytes() == b""


def test_a_short_header_prefix_after_records_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = (make(page=1).to_json() + "\n").encode()
    out.write_bytes(good + b'{"sc')
    assert load_existing(out).repaired_bytes == 4
    assert out.read_bytes() == good


def special_outputs(tmp_path: Path) -> list[Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_zero = tmp_path / "zero-link"
    to_zero.symlink_to("/dev/zero")
    return [Path("/dev/full"), Path("/dev/zero"), fifo, to_zero, tmp_path]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/full").exists(), reason="POSIX")
def test_outputs_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    for path in special_outputs(tmp_path):
        for use in (load_existing, JsonlWriter, latest_records):
            with pytest.raises(RecordsError, match=r"cannot use .*: it is a") as info:
                use(path)
            assert info.value.code == "output", (path, use)


def test_line_length_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 2000)
    out = tmp_path / "out.jsonl"
    content = (make(page=1).to_json() + "\n").encode() + b'{"schema_version":1,' + b"x" * 3000
    out.write_bytes(content)
    for read in (load_existing, latest_records):
        with pytest.raises(RecordsError, match="line 2 is longer than"):
            read(out)
    assert out.read_bytes() == content
    with JsonlWriter(tmp_path / "new.jsonl") as w, pytest.raises(RecordsError, match="limit"):
        w.write(make(text="y" * 3000))
    assert (tmp_path / "new.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b'{"name": "my-project"}\n', "JSON without the keys of an ixcdoc record"),
        (b"# Notes\n", "not JSON"),
        (b"\xff\xfe\x00\n", "not UTF-8 text"),
    ],
)
def test_refusal_says_in_a_few_words_what_the_file_holds(
    tmp_path: Path, content: bytes, what: str
) -> None:
    out = tmp_path / "mine.txt"
    out.write_bytes(content)
    with pytest.raises(RecordsError) as info:
        load_existing(out)
    assert str(info.value) == (
        f"{out} is not an ixcdoc output file (line 1: {what}); it was left untouched: "
        "choose another output file"
    )


def test_beams_are_part_of_the_key_and_written_only_when_used() -> None:
    greedy = make()
    beams = dataclasses.replace(greedy, num_beams=3)
    assert "num_beams" not in greedy.to_dict() and beams.to_dict()["num_beams"] == 3
    assert resume_key(beams) != resume_key(greedy)
    assert resume_key(beams).beams == 3 and resume_key(greedy).beams == 1
    assert PageRecord.from_dict(json.loads(beams.to_json())) == beams
    with pytest.raises(ValueError):
        dataclasses.replace(greedy, num_beams=1)  # 1 is greedy: written as absent
