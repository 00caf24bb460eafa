"""Ray itself (ixcdoc/distributed/cluster.py) without a Ray instance: the address forms, joining
an address where nothing answers, Ray Client refused, the replica plan for the cluster Ray
sees, and the dataset (``run_pages``) run in-process by a fake Ray (tests/distributed/fakeray.py).
Ray is never started here (tests/distributed/test_end_to_end.py does)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from ixcdoc.batch import run
from ixcdoc.distributed.cluster import (
    AUTO_CALL_PAGES,
    RayOptions,
    check_address,
    parse_address,
    reach,
    replica_plan,
)
from ixcdoc.distributed.driver import run_ray
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.tasks import EXTRACT
from ixcdoc.tinyckpt import write_tiny_checkpoint
from tests.cli.helpers import IXCDOC, read_records, subprocess_env, text_png
from tests.distributed.fakeray import FakeRay, install
from tests.distributed.helpers import by_page, mixed_folder

WAIT_S = 120  # bound on a child run; before the fix, an unreachable address hung for ever


def closed_port() -> int:
    """A local TCP port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "host", "port", "client"),
    [
        ("auto", None, None, False),
        ("10.0.0.1:6379", "10.0.0.1", 6379, False),
        ("ray://head.example:10001", "head.example", 10001, True),
        ("ray://[fe80::1]:10001", "fe80::1", 10001, True),
    ],
)
def test_address_forms(text: str, host: str | None, port: int | None, client: bool) -> None:
    a = parse_address(text)
    assert (a.host, a.port, a.client) == (host, port, client)


@pytest.mark.parametrize(
    "text", ["head", "ray://head", "head:0", "head:70000", "http://head:6379", "", "head:63 79"]
)
def test_malformed_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"use auto \(the cluster on this machine\) or HOST:PORT"):
        parse_address(text)


def test_ray_client_is_refused_with_what_to_do_instead() -> None:
    """Ray Data needs its driver on the cluster: through Ray Client (ray://) Ray 2.60 connects,
    then fails inside Ray Data. One usage line that says what works instead."""
    with pytest.raises(UsageError, match=r"does not run through Ray Client.*--ray-address auto"):
        check_address("ray://head:10001")
    assert check_address("head:6379").port == 6379


def test_an_address_where_nothing_listens_fails_at_once(loopback: None) -> None:
    port = closed_port()
    with pytest.raises(IxcdocError, match=f"nothing answers at 127.0.0.1:{port}") as info:
        reach(parse_address(f"127.0.0.1:{port}"), timeout=5)
    assert info.value.code == "ray_unreachable"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IXCDOC, *args],
        cwd=cwd,
        capture_output=True,
        env={**subprocess_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=WAIT_S,
    )


@pytest.mark.parametrize(
    ("address", "code", "says"),
    [
        ("ray://", 2, "use auto"),
        ("head", 2, "use auto"),
        ("ray://127.0.0.1:{port}", 2, "does not run through Ray Client"),
        ("127.0.0.1:{port}", 1, "nothing answers at 127.0.0.1:{port}"),
    ],
)
def test_the_cli_says_what_is_wrong_with_an_address_in_one_line(
    tmp_path: Path, address: str, code: int, says: str
) -> None:
    page = text_png(tmp_path / "a.png", "alpha")
    port = closed_port()
    address, says = address.format(port=port), says.format(port=port)
    done = _cli(["extract", str(page), "--ray-address", address, "-o", "out.jsonl"], tmp_path)
    err = done.stderr.decode()
    assert done.returncode == code, err
    assert err.startswith("error: ") and says in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("resources", "device", "replicas", "plan"),
    [
        ({"GPU": 2.0, "CPU": 8.0}, "auto", None, (2, 1.0, 1.0, "cuda")),  # one per GPU
        ({"GPU": 2.0, "CPU": 8.0}, "cpu", None, (1, 0.0, 7.0, "cpu")),  # GPUs left alone
        ({"CPU": 8.0}, "auto", None, (1, 0.0, 7.0, "cpu")),  # the CPUs less the renders'
        ({"CPU": 8.0}, "auto", 3, (3, 0.0, 2.0, "cpu")),
        ({"CPU": 1.0}, "auto", 2, (2, 0.0, 1.0, "cpu")),  # at least one CPU each
    ],
)
def test_the_replica_plan_follows_the_cluster(
    resources: dict[str, float],
    device: str,
    replicas: int | None,
    plan: tuple[int, float, float, str],
) -> None:
    ray = FakeRay(resources)
    assert replica_plan(ray, RayOptions(replicas=replicas), device) == plan


def test_a_cuda_device_on_a_cluster_without_gpus_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--device cuda: the Ray cluster has no GPU"):
        replica_plan(FakeRay({"CPU": 4.0}), RayOptions(), "cuda")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_the_dataset_gives_the_records_of_one_machine_flags_included(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_pages``' dataset (render tasks, then the replica pool) run in-process: the same
    records as ``batch.run``, the page flags (``type_mismatch``) included, in replica calls
    of ``--batch-size`` pages on the engine."""
    folder = mixed_folder(tmp_path / "docs")
    job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=6)
    one, many = tmp_path / "one.jsonl", tmp_path / "ray.jsonl"
    run(job, Sources([str(folder)]), model=ckpt, device="cpu", output=one)
    fake = FakeRay({"CPU": 4.0})
    install(monkeypatch, fake)
    options = RayOptions(batch_size=4)
    stats = run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", output=many, ray=options)
    got = read_records(many)
    assert by_page(got) == by_page(read_records(one))
    flagged = {Path(r.source).name: r.flags for r in got if set(r.flags) - {"blank"}}
    assert flagged == {"misnamed.pdf": ("type_mismatch",)}
    assert all(r.worker for r in got if r.status == "ok")  # written by a replica
    assert [(p["replicas"], p["batch_size"]) for p in fake.plans] == [(1, 4)]
    assert (stats.ok, stats.failed, stats.blank) == (6, 1, 1)


def test_auto_batch_size_calls_replicas_with_a_fixed_number_of_pages_and_no_idle_replica(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    text_png(folder / "a.png", "alpha")
    text_png(folder / "b.png", "beta")
    fake = FakeRay({"CPU": 16.0})
    install(monkeypatch, fake)
    job = Job(EXTRACT, EXTRACT.prompt, hd=4, max_new_tokens=4)
    options = RayOptions(replicas=5, batch_size=None)
    stats = run_ray(job, Sources([str(folder)]), model=ckpt, device="cpu", ray=options)
    # Two pages: two replicas, not five; calls of AUTO_CALL_PAGES pages.
    assert [(p["replicas"], p["batch_size"]) for p in fake.plans] == [(2, AUTO_CALL_PAGES)]
    assert stats.ok == 2
