"""Ray itself: joining or starting it, the replica plan for the cluster it sees, and the
dataset that runs listed pages through render tasks and the replica pool."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.distributed.listing import PageTask
from ixcdoc.distributed.workers import RENDER_CPUS, ModelReplica, render_row
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.pagerun import Job

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.records import PageRecord


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    ``address``: None starts Ray on this machine (or uses the Ray this process already
    joined); "auto" or "host:port" (the head's GCS) joins a running cluster. ``replicas``: model
    replicas (default: one per GPU in the cluster, or one on a cluster without GPUs).
    ``batch_size``: pages per call of a replica, all in flight on its batched engine (1: one
    at a time with ``chat``; None: calls of ``AUTO_CALL_PAGES`` pages on an engine sized by the
    replica's memory). ``verbose``: Ray's own logs and progress bars.
    """

    address: str | None = None
    replicas: int | None = None
    batch_size: int | None = 1
    verbose: bool = False


AUTO_CALL_PAGES = 16  # pages per replica call when --batch-size is auto
CONNECT_TIMEOUT_S = 10.0  # how long joining a cluster waits for its address to answer
_FORMS = "use auto (the cluster on this machine) or HOST:PORT (the head's GCS, e.g. 10.0.0.1:6379)"


@dataclass(frozen=True)
class RayAddress:
    """A ``--ray-address`` that parses: "auto", or a host and port (``client``: ray://)."""

    text: str
    host: str | None = None  # None: "auto", found by Ray on this machine
    port: int | None = None
    client: bool = False  # ray://HOST:PORT: Ray Client (refused: check_address)


def parse_address(text: str) -> RayAddress:
    """``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (IPv6 in brackets); else UsageError."""
    t = text.strip()
    if t == "auto":
        return RayAddress(t)
    client = t.startswith("ray://")
    rest = t.removeprefix("ray://")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", rest)
    if m is None or not 0 < int(m[2]) < 65536:
        raise UsageError(f"--ray-address {text!r}: {_FORMS}")
    return RayAddress(t, m[1].strip("[]"), int(m[2]), client)


def check_address(text: str) -> RayAddress:
    """What can be known of an address before Ray starts: its form, and that it is not Ray
    Client's ray://, which cannot run this job. UsageError otherwise."""
    address = parse_address(text)
    if address.client:
        # Measured with Ray 2.60: the connection works, then Ray Data's executor fails
        # ('Worker' object has no attribute 'core_worker'): it needs a driver on the cluster.
        raise UsageError(
            f"--ray-address {address.text}: Ray Data does not run through Ray Client (ray://); "
            "run ixcdoc on a node of the cluster with --ray-address auto, or give the head's "
            "GCS address HOST:6379 (docs/scale.md)"
        )
    return address


def reach(address: RayAddress, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Make sure something answers at the address before Ray is asked to join it: Ray itself
    retries an address where nothing listens for ever, printing warnings."""
    import socket

    host, port = address.host, address.port
    if host is None or port is None:  # auto: Ray's own record of the cluster on this machine
        host, port = _auto_address(address)
        if host is None or port is None:
            return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except TimeoutError:
        why = f"no answer within {timeout:.0f} s"
    except OSError as e:
        why = e.strerror or str(e)
    raise IxcdocError(
        f"--ray-address {address.text}: nothing answers at {host}:{port} ({why}); is the "
        "cluster up? (`ray status` on its head node)",
        code="ray_unreachable",
    )


def _auto_address(address: RayAddress) -> tuple[str | None, int | None]:
    """The address "auto" means (the cluster `ray start` recorded on this machine)."""
    try:
        from ray._private import services

        found = services.canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        raise IxcdocError(
            f"--ray-address {address.text}: no running Ray cluster found on this machine; "
            "start one with `ray start --head`, or give HOST:PORT",
            code="ray_unreachable",
        ) from None
    except Exception:  # pragma: no cover - another Ray layout: let ray.init find it
        return None, None
    host, _, port = str(found).rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else (None, None)


@contextlib.contextmanager
def _ray_output_to(log: str | None) -> Iterator[None]:
    """While Ray runs in this process, its own output goes to the file ``log`` (None: where it
    goes). Ray's C++ side writes log lines to file descriptor 2 (a line about
    RAY_BACKEND_LOG_LEVEL as it starts, errors about actor arguments while replicas start),
    below any Python logging setting: descriptor 2 is pointed at ``log`` for the session,
    and Python's own ``sys.stderr`` (ixcdoc's progress, notes and errors) moved to a copy of
    the real one, so only Ray's lines leave the terminal. Ray keeps the same lines in its
    session logs."""
    if log is None:
        yield
        return
    import sys

    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    previous, ours = sys.stderr, None
    try:
        uses_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's stream: not descriptor 2
        uses_fd2 = False
    if uses_fd2:
        ours = open(  # noqa: SIM115 - it outlives this block if someone still holds it
            os.dup(saved),
            "w",
            encoding=getattr(previous, "encoding", None) or "utf-8",
            errors=getattr(previous, "errors", None) or "backslashreplace",
            buffering=1,
        )
        sys.stderr = ours
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, 2)
    os.close(target)
    try:
        with warnings.catch_warnings():  # Ray's Python warnings join its other lines
            warnings.showwarning = _warning_to_fd2
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if ours is not None and sys.stderr is ours:
            sys.stderr = previous
            ours.close()


def _warning_to_fd2(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
    text = warnings.formatwarning(message, category, filename, lineno)
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _new_log() -> str:
    import tempfile

    fd, log = tempfile.mkstemp(prefix="ixcdoc-ray-", suffix=".log")
    os.close(fd)
    return log


def _init(ray: Any, kwargs: dict[str, Any], options: RayOptions, log: str | None) -> None:
    """``ray.init(**kwargs)``; a failure is one line (naming Ray's output, kept in ``log``)."""
    try:
        ray.init(**kwargs)
    except Exception as e:
        where = "start Ray on this machine"
        if options.address is not None:
            where = f"join the Ray cluster at {options.address}"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        kept = f" (Ray's output: {log})" if log is not None else ""
        if log is not None and "InvalidAuthToken" in _read(log):
            kept = (
                "; the cluster wants its token: set RAY_AUTH_MODE=token (Ray reads the token "
                f"from ~/.ray/auth_token or RAY_AUTH_TOKEN){kept}"
            )
        raise IxcdocError(f"cannot {where}: {first}{kept}", code="ray") from None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return ""


@contextlib.contextmanager
def ray_session(options: RayOptions, replicas: int | None = None) -> Iterator[Any]:
    """Ray for this run: the instance this process already joined, a cluster to join, or a
    new one on this machine (shut down at the end). Ray's own output stays off the terminal
    unless ``verbose`` (``_ray_output_to``)."""
    address = None if options.address is None else check_address(options.address)
    try:
        import ray
    except ImportError as e:
        raise UsageError('--ray needs Ray Data: pip install "ixcdoc[ray]"') from e

    if ray.is_initialized():  # this process joined Ray itself: use it, leave it running
        restore = _errors_to_stderr()
        try:
            yield ray
        finally:
            restore()
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": options.verbose,
        "logging_level": logging.INFO if options.verbose else logging.ERROR,
    }
    if not options.verbose:
        # Less for the driver's core worker to log at all (its lines go to the log anyway).
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address is None:
        # "local": always a new instance, never a cluster `ray start` left on this machine.
        kwargs["address"] = "local"
        cpus = os.cpu_count() or 1
        # CPU replicas take one CPU each; keep one for the render tasks.
        kwargs["num_cpus"] = max(cpus, (replicas or 1) + 1)
        kwargs["_node_ip_address"] = "127.0.0.1"
    else:
        reach(address)
        kwargs["address"] = address.text
    log = None if options.verbose else _new_log()
    keep = False
    try:
        with _ray_output_to(log):
            restore = _errors_to_stderr()
            try:
                try:
                    _init(ray, kwargs, options, log)
                except BaseException:
                    keep = True
                    raise
                if log is not None:  # Ray is up: the file goes now (a killed run leaves none);
                    with contextlib.suppress(OSError):  # descriptor 2 still writes into it
                        os.unlink(log)
                try:
                    yield ray
                finally:
                    ray.shutdown()
            finally:
                restore()
    finally:
        if log is not None and not keep:
            with contextlib.suppress(OSError):
                os.unlink(log)


def _errors_to_stderr() -> Callable[[], None]:
    """Send what Ray prints for people (a replica that died, worker logs) to stderr.

    Ray's driver prints cluster error messages to stdout, where they would land between the
    records of ``--json`` (stdout is for results). Ray has no option for this, so its print
    function is wrapped for the run; returns the undo. A Ray without it is left alone.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout
        return lambda: None
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:  # pragma: no cover
        return lambda: None

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    ray_worker.print_to_stdstream = to_stderr
    return lambda: setattr(ray_worker, "print_to_stdstream", original)


def replica_plan(ray: Any, options: RayOptions, device: str) -> tuple[int, float, float, str]:
    """(replicas, GPUs each, CPUs each, device) for the cluster Ray sees."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    use_gpu = gpus > 0 and device != "cpu"
    if device.startswith("cuda") and not use_gpu:
        raise UsageError(f"--device {device}: the Ray cluster has no GPU")
    n = options.replicas or (gpus if use_gpu else 1)
    if use_gpu:
        # Ray gives each actor its own GPU through CUDA_VISIBLE_DEVICES: it is cuda:0 there.
        return n, 1.0, 1.0, "cuda"
    # Without GPUs the replicas share the CPUs (torch uses as many threads as CPUs given).
    each = max(1.0, (cpus - RENDER_CPUS * 2) // n)
    return n, 0.0, each, "cpu"


def run_pages(
    ray: Any,
    tasks: list[PageTask],
    job: Job,
    sources: Sources,
    *,
    model: str,
    device: str,
    quant: str,
    options: RayOptions,
) -> Iterator[PageRecord]:
    """Run listed pages through render tasks and the replica pool; records as they come."""
    from ray.data import ActorPoolStrategy, DataContext

    from ixcdoc.records import PageRecord

    if not options.verbose:
        # Ray Data logs each execution to the console at INFO; ixcdoc draws its own progress.
        for handler in logging.getLogger("ray.data").handlers:
            if type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = options.verbose
    ctx.print_on_execution_start = options.verbose
    replicas, gpus, cpus, actor_device = replica_plan(ray, options, device)
    replicas = max(1, min(replicas, len(tasks)))
    rows = [dataclasses.asdict(t) for t in tasks]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map(
        render_row,
        fn_kwargs={
            "password": sources.password,
            "max_pixels": sources.max_pixels,
            "drafts": job.drafts,
        },
        num_cpus=RENDER_CPUS,
    )
    ds = ds.map_batches(
        ModelReplica,
        fn_constructor_kwargs={
            "job": job,
            "model": model,
            "device": actor_device,
            "quant": quant,
            "batch_size": options.batch_size,
        },
        compute=ActorPoolStrategy(size=replicas),
        batch_size=options.batch_size or AUTO_CALL_PAGES,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_format="numpy",
        # Ray Data's actor pools restart a replica that dies (OOM, kill -9, a lost node) and
        # retry its batch (max_restarts=-1, max_task_retries=-1 by default): not set here.
    )
    for row in ds.iter_rows():
        yield PageRecord.from_dict(json.loads(row["record"]))
