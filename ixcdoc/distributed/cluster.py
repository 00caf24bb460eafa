"""Ray itself: joining or starting it, the replica plan for the cluster it sees, and the
dataset that runs listed pages through render tasks and the replica pool."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.distributed.listing import PageTask
from ixcdoc.distributed.workers import RENDER_CPUS, ModelReplica, render_row
from ixcdoc.errors import UsageError
from ixcdoc.runner import Job

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.records import PageRecord


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    ``address``: None starts Ray on this machine (or uses the Ray this process already
    joined); "auto" or "ray://host:port" joins a running cluster. ``replicas``: model
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


@contextlib.contextmanager
def ray_session(options: RayOptions, replicas: int | None = None) -> Iterator[Any]:
    """Ray for this run: the instance this process already joined, a cluster to join, or a
    new one on this machine (shut down at the end)."""
    try:
        import ray
    except ImportError as e:
        raise UsageError('--ray needs Ray Data: pip install "ixcdoc[ray]"') from e

    restore = _errors_to_stderr()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": options.verbose,
            "logging_level": logging.INFO if options.verbose else logging.ERROR,
        }
        if not options.verbose:
            # The driver's core worker logs to stderr at error level about things that are
            # fine here (actor arguments in the object store); it reads this when it starts.
            # Failures still reach ixcdoc as exceptions.
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        if options.address is None:
            # "local": always a new instance, never a cluster `ray start` left on this machine.
            kwargs["address"] = "local"
            cpus = os.cpu_count() or 1
            # CPU replicas take one CPU each; keep one for the render tasks.
            kwargs["num_cpus"] = max(cpus, (replicas or 1) + 1)
            kwargs["_node_ip_address"] = "127.0.0.1"
        else:
            kwargs["address"] = options.address
        ray.init(**kwargs)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
        restore()


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
        fn_kwargs={"password": sources.password, "max_pixels": sources.max_pixels},
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
