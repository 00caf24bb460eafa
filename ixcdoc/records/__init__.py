"""Output records: one JSON object per page and per line (docs/output.md), in three rooms.

``schema`` is the record (its keys, order and types, validation, the resume key), ``jsonl``
the crash-safe file any ixcdoc JSONL lives in (locked, fsynced appends; a torn tail cut, and
nothing else touched), ``resume`` what a run's output already holds and opening it for a run
(a file or a folder of shards). Pure standard library. The public names are re-exported here:
``from ixcdoc.records import PageRecord, open_records``.
"""

from ixcdoc.records.jsonl import MAX_LINE_BYTES, JsonlWriter, RecordsError
from ixcdoc.records.resume import (
    ResumeState,
    ShardWriter,
    is_shard_dir,
    latest_of,
    latest_records,
    load_existing,
    load_shards,
    lock_shards,
    merge_shards,
    open_output,
    open_records,
    shard_paths,
)
from ixcdoc.records.schema import (
    FIELDS,
    FLAGS,
    OPTIONAL_FIELDS,
    PRECISIONS,
    RECORD_HEADER,
    SCHEMA_VERSION,
    STATUSES,
    TASKS,
    TIMING_KEYS,
    ErrorInfo,
    PageRecord,
    ResumeKey,
    Screening,
    Timings,
    make_key,
    resume_key,
    utc_now,
    validate_line,
    validate_record,
)

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
    "TIMING_KEYS",
    "ErrorInfo",
    "JsonlWriter",
    "PageRecord",
    "RecordsError",
    "ResumeKey",
    "ResumeState",
    "Screening",
    "ShardWriter",
    "Timings",
    "is_shard_dir",
    "latest_of",
    "latest_records",
    "load_existing",
    "load_shards",
    "lock_shards",
    "make_key",
    "merge_shards",
    "open_output",
    "open_records",
    "resume_key",
    "shard_paths",
    "utc_now",
    "validate_line",
    "validate_record",
]
