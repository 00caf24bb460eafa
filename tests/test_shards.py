"""The optional ``worker`` key of Ray records, and shards: their resume state and the merge
(``ixcdoc merge``). No Ray here: the shards are written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ixcdoc.cli import app
from ixcdoc.records import (
    FIELDS,
    JsonlWriter,
    PageRecord,
    latest_records,
    load_shards,
    merge_shards,
    resume_key,
    validate_line,
)
from tests.cli.helpers import read_records
from tests.test_records import failed, make


def invoke(args: list[object]) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_worker_is_written_last_and_only_when_set() -> None:
    plain = json.loads(make().to_json())
    assert list(plain) == list(FIELDS)  # a one-machine record is unchanged
    ray = json.loads(make(worker="node-1:4242").to_json())
    assert list(ray) == [*FIELDS, "worker"] and ray["worker"] == "node-1:4242"
    assert validate_line(make(worker="node-1:4242").to_json()).worker == "node-1:4242"
    assert validate_line(make().to_json()).worker is None


def test_worker_out_of_place_or_empty_is_rejected() -> None:
    d = make().to_dict()
    moved = {"worker": "n:1", **d}
    with pytest.raises(ValueError, match="schema order"):
        validate_line(json.dumps(moved))
    with pytest.raises(ValueError, match="worker: expected a non-empty string"):
        PageRecord.from_dict({**d, "worker": ""})


def write(path: Path, *records: PageRecord) -> Path:
    with JsonlWriter(path) as w:
        for r in records:
            w.write(r)
    return path


def test_shards_resume_as_one_file(tmp_path: Path) -> None:
    # page 1 failed in one shard and succeeded in another; page 2 only failed.
    write(tmp_path / "part-a.jsonl", failed(page=1), failed(page=2))
    write(tmp_path / "part-b.jsonl", make(page=1, created_at="2026-01-31T12:05:00Z"))
    state = load_shards(tmp_path)
    assert resume_key(make(page=1)) in state.done
    assert set(state.failed) == {resume_key(make(page=2))}
    assert state.count == 3


def test_merge_keeps_the_latest_record_per_page(tmp_path: Path) -> None:
    old_ok = make(page=1, text="old", created_at="2026-01-31T12:00:00Z")
    new_ok = make(page=1, text="new", created_at="2026-01-31T13:00:00Z", worker="n:2")
    other = make(page=2, created_at="2026-01-31T12:30:00Z")
    # The newer record sits in the shard that sorts first: time decides, not file order.
    a = write(tmp_path / "part-a.jsonl", new_ok)
    b = write(tmp_path / "part-b.jsonl", old_ok, other)
    merged = merge_shards([a, b])
    assert [(r.page, r.text) for r in merged] == [(2, other.text), (1, "new")]
    assert merged[1].worker == "n:2"


def test_merge_command_writes_one_file(tmp_path: Path) -> None:
    shards = tmp_path / "out"
    shards.mkdir()
    whole_file_error = failed(page=None, page_count=None, created_at="2026-01-31T11:00:00Z")
    write(shards / "part-1.jsonl", whole_file_error, make(page=1))
    write(shards / "part-2.jsonl", make(page=2), make(page=1, created_at="2026-01-31T12:00:01Z"))
    target = write(tmp_path / "all.jsonl", make(page=3))  # an older merge: replaced, not appended
    result = invoke(["merge", shards, "-o", target])
    assert result.exit_code == 0, result.stderr
    got = read_records(target)
    # The page records supersede the whole-file error; page 1 once, its later record.
    assert sorted(r.page for r in got) == [1, 2]
    assert next(r for r in got if r.page == 1).created_at == "2026-01-31T12:00:01Z"
    assert latest_records(target) == got
    assert "2 records from 2 shards" in result.stderr


def test_merge_never_replaces_a_file_that_is_not_ixcdoc_records(tmp_path: Path) -> None:
    shards = tmp_path / "out"
    shards.mkdir()
    write(shards / "part-1.jsonl", make(page=1))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = invoke(["merge", shards, "-o", notes])
    assert result.exit_code == 1 and "not an ixcdoc output file" in result.stderr
    assert notes.read_text() == "my notes\n"


def test_merge_of_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["merge", tmp_path, "-o", tmp_path / "x.jsonl"])
    assert result.exit_code == 2
    assert "no *.jsonl shards" in result.stderr


def test_merge_o_refuses_a_folder_name(tmp_path: Path) -> None:
    """-o DIR/ names a folder everywhere: merge writes one file, so it is a usage error, not a
    file named DIR."""
    shards = tmp_path / "out"
    shards.mkdir()
    write(shards / "part-1.jsonl", make(page=1))
    result = invoke(["merge", shards, "-o", f"{tmp_path}/all/"])
    assert result.exit_code == 2 and "names a folder" in result.stderr
    assert not (tmp_path / "all").exists()
