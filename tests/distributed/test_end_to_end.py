"""``extract --ray`` on a local Ray instance with CPU replicas and a tiny checkpoint: the same
records as one machine, a replica or the driver killed mid-run, a corrupt file, shards.

Run alone with ``pytest -m ray``. One Ray instance serves the whole module (starting Ray
takes tens of seconds on 2 cores); the CLI runs in a child process join it by address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ixcdoc.batch import Events, run
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.records import PageRecord, resume_key, validate_line
from ixcdoc.tasks import EXTRACT
from tests.cli.helpers import (
    IXCDOC,
    read_records,
    subprocess_env,
    text_pdf,
    text_png,
)
from tests.distributed.helpers import by_page, mixed_folder

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'ixcdoc[ray]'")

pytestmark = pytest.mark.ray

RAY_CPUS = 3  # two CPU replicas of one CPU each, and one for the render tasks
SLOW_TOKENS = 40  # tens of decode steps per page: a run is still going after its first record
WAIT_S = 300  # bound on any wait for a child process, on a loaded 2-core machine


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A local Ray instance for this module; its GCS address for child processes."""
    from ixcdoc.distributed import RayOptions, ray_session

    # The driver's own Ray (the in-process tests) must not fall back to another instance.
    assert not ray.is_initialized()
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        object_store_memory=512 * 1024**2,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    try:
        # run_ray uses the Ray this process joined and leaves it running.
        with ray_session(RayOptions()) as r:
            assert r.is_initialized()
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_ray_run_gives_the_records_of_one_machine(
    ray_address: str, ckpt: Path, tmp_path: Path
) -> None:
    from ixcdoc.distributed import RayOptions, run_ray

    folder = mixed_folder(tmp_path / "docs")
    job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=6)
    one = tmp_path / "one.jsonl"
    many = tmp_path / "ray.jsonl"
    run(job, Sources([str(folder)]), model=ckpt, device="cpu", output=one)
    stats = run_ray(
        job,
        Sources([str(folder)]),
        model=ckpt,
        device="cpu",
        output=many,
        ray=RayOptions(replicas=2),
    )
    expected, got = read_records(one), read_records(many)
    assert by_page(got) == by_page(expected)
    assert len(got) == len(expected) == 7  # 6 pages and the corrupt file, each once
    flagged = {Path(r.source).name: tuple(r.flags) for r in got if set(r.flags) - {"blank"}}
    assert flagged == {"misnamed.pdf": ("type_mismatch",)}
    # The corrupt file fails alone: its error, and every other page ok.
    bad = [r for r in got if r.status == "error"]
    assert [(Path(r.source).name, r.error.code if r.error else None) for r in bad] == [
        ("bad.pdf", "corrupt")
    ]
    assert stats.ok == 6 and stats.failed == 1 and stats.blank == 1
    model_pages = [r for r in got if r.status == "ok" and "blank" not in r.flags]
    assert model_pages and all(r.worker and r.precision == "fp32" for r in model_pages)
    assert any(r.text for r in model_pages)  # the tiny model does write something

    # Resume: nothing left to do; the corrupt file is retried only with redo_failed.
    again = run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", output=many)
    assert (again.skipped, again.skipped_failed, again.ok, again.failed) == (6, 1, 0, 0)
    redo = run_ray(
        job, Sources([str(folder)]), model=ckpt, device="cpu", output=many, redo_failed=True
    )
    assert (redo.skipped, redo.skipped_failed, redo.ok, redo.failed) == (6, 0, 0, 1)
    assert len(read_records(many)) == 8  # the retried failure appended, nothing else


def test_replicas_on_the_batched_engine_give_the_same_records(
    ray_address: str, ckpt: Path, tmp_path: Path
) -> None:
    """--batch-size N: each replica call runs its pages together on the engine."""
    from ixcdoc.distributed import RayOptions, run_ray

    folder = mixed_folder(tmp_path / "docs")
    job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=6)
    one, many = tmp_path / "one.jsonl", tmp_path / "ray.jsonl"
    run(job, Sources([str(folder)]), model=ckpt, device="cpu", output=one, batch_size=1)
    stats = run_ray(
        job,
        Sources([str(folder)]),
        model=ckpt,
        device="cpu",
        output=many,
        ray=RayOptions(replicas=1, batch_size=4),
    )
    assert by_page(read_records(many)) == by_page(read_records(one))
    assert (stats.ok, stats.failed) == (6, 1)


def test_object_store_uris_read_like_local_paths(
    ray_address: str, ckpt: Path, tmp_path: Path
) -> None:
    from ixcdoc.distributed import RayOptions, run_ray

    folder = tmp_path / "docs"
    text_png(folder / "a.png", "alpha")
    text_pdf(folder / "sub" / "two.pdf", ["hello page one", "page two"])
    job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=6)
    local, remote = tmp_path / "local.jsonl", tmp_path / "uri.jsonl"
    opts = RayOptions(replicas=1)
    run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", output=local, ray=opts)
    # file:// goes through pyarrow's file systems, the same code as s3:// and gs://.
    uri = folder.as_uri()
    run_ray(job, Sources([uri]), model=ckpt, device="cpu", output=remote, ray=opts)
    got = read_records(remote)
    assert sorted(r.source for r in got) == [
        f"{uri}/a.png",
        f"{uri}/sub/two.pdf",
        f"{uri}/sub/two.pdf",
    ]

    def content(records: list[PageRecord]) -> dict[tuple[str | None, int | None], Any]:
        return {(r.content_sha256, r.page): (r.status, r.text, r.tier) for r in records}

    assert content(got) == content(read_records(local))
    assert all(r.status == "ok" for r in got)


class KillFirstWorker(Events):
    """Kill (SIGKILL) the replica process that wrote the first record, once."""

    def __init__(self) -> None:
        self.killed: int | None = None

    def record(self, item: Any, rec: PageRecord) -> None:
        if rec.worker is None:
            return
        pid = int(rec.worker.rsplit(":", 1)[1])
        if self.killed is None:
            self.killed = pid
            os.kill(pid, signal.SIGKILL)


def pages_folder(root: Path, n: int) -> Path:
    for i in range(n):
        text_png(root / f"p{i:02d}.png", f"page number {i}", size=(150 + i, 120))
    return root


def test_a_killed_replica_loses_no_page_and_duplicates_none(
    ray_address: str, ckpt: Path, tmp_path: Path
) -> None:
    from ixcdoc.distributed import RayOptions, run_ray

    n = 6
    folder = pages_folder(tmp_path / "scans", n)
    out = tmp_path / "out.jsonl"
    events = KillFirstWorker()
    stats = run_ray(
        Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=SLOW_TOKENS),
        Sources([str(folder)]),
        model=ckpt,
        device="cpu",
        output=out,
        events=events,
        ray=RayOptions(replicas=2),
    )
    records = read_records(out)
    assert events.killed is not None
    with pytest.raises(ProcessLookupError):  # the kill took effect
        os.kill(events.killed, 0)
    assert Counter(r.page and r.source for r in records) == Counter(
        str(p) for p in sorted(folder.iterdir())
    )
    assert all(r.status == "ok" for r in records)
    assert stats.ok == n and stats.failed == 0


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*IXCDOC, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def wait_for_lines(proc: subprocess.Popen, out: Path, n: int) -> None:
    """Poll the output until it holds n complete lines, waiting on the process in between."""
    import time

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        try:  # wait on the process itself between looks at the file, not a bare sleep
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        _, err = proc.communicate()
        pytest.fail(f"ixcdoc exited ({proc.returncode}) before {n} records: {err.decode()}")
    proc.kill()
    proc.communicate()
    pytest.fail(f"fewer than {n} records in {out} after {WAIT_S} s")


def test_rerun_after_killing_a_replica_and_the_driver_finishes_exactly_once(
    ray_address: str, ckpt: Path, tmp_path: Path
) -> None:
    n = 6
    folder = pages_folder(tmp_path / "scans", n)
    out = tmp_path / "out.jsonl"
    args = ["extract", str(folder), "-o", str(out), "--ray-address", ray_address]
    args += ["--replicas", "2", "--model", str(ckpt), "--device", "cpu", "--hd", "4"]
    # One page per replica call, so records arrive page by page while the test kills things.
    args += ["--max-new-tokens", str(SLOW_TOKENS), "--json", "--batch-size", "1"]
    proc = start_cli(args, tmp_path)
    try:
        wait_for_lines(proc, out, 1)
        first = json.loads(out.read_text().splitlines()[0])
        os.kill(int(first["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # a replica dies
        wait_for_lines(proc, out, 2)
        proc.kill()  # then the driver: SIGKILL, no cleanup
        stdout, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    before = out.read_bytes().count(b"\n")
    assert before < n, "the run finished before the driver was killed; nothing was tested"
    done = subprocess.run(
        [*IXCDOC, *args],
        cwd=tmp_path,
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr.decode()
    # stdout carries records only: Ray's note about the dead replica goes to stderr.
    for line in (stdout + done.stdout).decode().splitlines():
        validate_line(line)
    records = read_records(out)
    keys = Counter(resume_key(r) for r in records)
    assert len(keys) == n and set(keys.values()) == {1}, keys
    assert sorted(r.source for r in records) == sorted(str(p) for p in folder.iterdir())
    assert "already done" in done.stderr.decode()


def test_shards_resume_and_merge(ray_address: str, ckpt: Path, tmp_path: Path) -> None:
    from ixcdoc.distributed import RayOptions, run_ray

    folder = pages_folder(tmp_path / "scans", 3)
    shards = tmp_path / "out"
    job = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=4)
    opts = RayOptions(replicas=1)
    first = run_ray(
        job,
        Sources([str(folder)], pages="1"),
        model=ckpt,
        device="cpu",
        output=f"{shards}/",
        ray=opts,
    )
    # Another page appears; the second run does only that one, in a new shard.
    text_png(folder / "p99.png", "late page")
    second = run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", output=shards, ray=opts)
    assert (first.ok, second.ok, second.skipped) == (3, 1, 3)
    parts = sorted(shards.glob("part-*.jsonl"))
    assert [len(read_records(p)) for p in parts] in ([3, 1], [1, 3])
    third = run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", output=shards, ray=opts)
    assert (third.ok, third.skipped) == (0, 4)
    assert sorted(shards.glob("part-*.jsonl")) == parts  # nothing to do: no empty shard
    merged = tmp_path / "all.jsonl"
    done = subprocess.run(
        [*IXCDOC, "merge", str(shards), "-o", str(merged)],
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(r.source for r in read_records(merged)) == sorted(
        str(p) for p in folder.iterdir()
    )


def test_stdin_is_refused_before_ray_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [*IXCDOC, "extract", "-", "--ray", "-o", str(tmp_path / "o.jsonl")],
        input=b"not read",
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )
    assert done.returncode == 2
    assert "stdin" in done.stderr.decode() and "--ray" in done.stderr.decode()


def test_ray_alone_starts_ray_here_and_stops_it(ckpt: Path, tmp_path: Path) -> None:
    """The default: no address, so the CLI starts its own local Ray and shuts it down. With
    -q, stderr stays empty: none of Ray's own lines (its C++ side writes to descriptor 2)."""
    folder = pages_folder(tmp_path / "scans", 2)
    out = tmp_path / "out.jsonl"
    args = ["extract", str(folder), "-o", str(out), "--ray", "--replicas", "2", "-q"]
    args += ["--model", str(ckpt), "--device", "cpu", "--hd", "4", "--max-new-tokens", "4"]
    done = subprocess.run(
        [*IXCDOC, *args],
        cwd=tmp_path,
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )
    assert done.returncode == 0, done.stderr.decode()
    records = read_records(out)
    assert sorted(r.source for r in records) == sorted(str(p) for p in folder.iterdir())
    assert all(r.status == "ok" and r.worker for r in records)
    assert done.stderr.decode() == ""
