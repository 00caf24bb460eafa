"""``ixcdoc merge``: a folder of record shards (``extract --ray -o DIR/``) into one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ixcdoc.cli.app import app, err, handles_errors
from ixcdoc.cli.options import file_only
from ixcdoc.errors import UsageError


@app.command()
@handles_errors
def merge(
    shards: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder of *.jsonl shards (or one file).")
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="The merged JSONL (replaced).",
            callback=file_only,
        ),
    ],
) -> None:
    """Merge record shards into one JSONL file: the latest record of each page.

    \b
    ixcdoc extract scans/ -o out/ --ray
    ixcdoc merge out/ -o scans.jsonl
    """
    from ixcdoc.records import JsonlWriter, load_existing, merge_shards, shard_paths

    target = Path(output)
    paths = [shards] if shards.is_file() else shard_paths(shards)
    if not paths:
        raise UsageError(f"{shards}: no *.jsonl shards in this folder")
    if target.resolve() in {p.resolve() for p in paths}:
        raise UsageError(f"{output} is one of the shards; write the merge somewhere else")
    if target.exists() or target.is_symlink():
        # Replacing is the point, but only an ixcdoc records file: anything else (a user's
        # notes, a device) is refused untouched, as extract's -o refuses it.
        load_existing(target)
    records = merge_shards(paths)
    # Written beside the target, then renamed over it: a crash never leaves half a merge.
    tmp = target.with_name(f".{target.name}.merging")
    tmp.unlink(missing_ok=True)
    with JsonlWriter(tmp) as w:
        for rec in records:
            w.write(rec)
    os.replace(tmp, target)
    err.print(f"{len(records)} records from {len(paths)} shards in {output}", markup=False)
