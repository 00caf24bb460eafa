"""The batch run on Ray Data: the same job, records and resume as ``batch.run``, on every GPU
of a node or a cluster.

    >>> from ixcdoc.distributed import RayOptions, run_ray
    >>> stats = run_ray(job, Sources(["scans/"]), output="scans.jsonl", ray=RayOptions())

The driver lists the documents and their pages (each document opened once, here), drops the
pages the output already holds (the same keys as ``PageRunner.key``), and builds a dataset of
the rest: pages are rendered and blank-checked on CPU tasks, then an actor pool runs the
model, one replica per GPU (or on the CPU where the cluster has none). The driver writes each
record as it arrives with ``JsonlWriter``, so the output is an ordinary records file and a
rerun resumes it like one written on one machine. A page whose replica died is retried by Ray;
a page still missing after that is retried once more by a second pass; a record that arrives
twice is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ixcdoc.batch import BatchStats, Events, skip_rule
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.reading import PageItem, file_sha256_or_none
from ixcdoc.runner import Job, PageRunner

if TYPE_CHECKING:
    from ixcdoc.inputs import Document, Sources
    from ixcdoc.records import PageRecord, ResumeKey, ResumeState

# Rendering a page is light next to the model: a fraction of a CPU leaves the rest to the
# replicas, and a CPU-only cluster never has its render tasks wait behind the actors.
RENDER_CPUS = 0.25
PASSES = 2  # Ray's own retries, then one pass over whatever is still missing


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    ``address``: None starts Ray on this machine (or uses the Ray this process already
    joined); "auto" or "ray://host:port" joins a running cluster. ``replicas``: model
    replicas (default: one per GPU in the cluster, or one on a cluster without GPUs).
    ``batch_size``: pages per call of a replica. ``verbose``: Ray's own logs and progress bars.
    """

    address: str | None = None
    replicas: int | None = None
    batch_size: int = 1
    verbose: bool = False


@dataclass(frozen=True)
class PageTask:
    """One page to do, as the driver lists it: what the render task opens."""

    source: str
    path: str
    sha256: str
    page: int
    page_count: int


def is_shard_dir(output: str | os.PathLike[str]) -> bool:
    """``-o DIR/`` (a trailing slash or an existing folder): a folder of JSONL shards."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or os.path.isdir(text)


def shard_output(directory: str | os.PathLike[str]) -> Path:
    """A new shard in ``directory`` for this run (the folder is created if missing)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"part-{uuid.uuid4().hex[:12]}.jsonl"


# ---- the driver: list the pages ----------------------------------------------------------


@dataclass
class Listing:
    """What the driver found: pages to schedule and whole-file errors to record now."""

    tasks: list[PageTask] = dataclasses.field(default_factory=list)
    file_errors: list[PageItem] = dataclasses.field(default_factory=list)


def list_pages(
    job: Job,
    sources: Sources,
    runner: PageRunner,
    state: ResumeState | None,
    *,
    redo_failed: bool,
    stats: BatchStats,
    events: Events,
) -> Listing:
    """Open each document once, select its pages, and keep those not done yet (in order)."""
    if sources.stdin is not None or sources.stdin_error is not None or "-" in sources.paths:
        raise UsageError(
            'stdin ("-") cannot be read with --ray: the replicas read the files themselves; '
            "save it to a file on the shared file system"
        )
    skip = skip_rule(runner, job, state, redo_failed) if state is not None else None
    choose = job.choose_pages()
    listing = Listing()
    scheduled: set[ResumeKey] = set()
    for item in _documents(sources):
        if isinstance(item, IxcdocError):
            source = getattr(item, "source", "?")
            unread = item.code in ("not_found", "unreadable")
            sha = None if unread else file_sha256_or_none(source)
            events.opened(source, 1, single=False)
            error_item = PageItem(source, sha, getattr(item, "page", None), None, error=item)
            stats.pages += 1
            key = runner.key(job, sha, source, error_item.page)
            if state is not None and state.should_skip(key, redo_failed=redo_failed):
                stats.skipped_failed += key in state.failed
                stats.skipped += key in state.done
                events.skipped(error_item)
                continue
            listing.file_errors.append(error_item)
            continue
        doc, numbers = item
        if choose is not None:
            numbers = choose(doc, numbers)
        events.opened(doc.source, len(numbers), single=False)
        # Absolute: Ray's workers do not share the driver's working folder. A URI's document
        # was read from bytes; the render task reads the URI again.
        path = os.path.abspath(doc.path) if doc.path is not None else doc.source
        for n in numbers:
            stats.pages += 1
            key = runner.key(job, doc.sha256, doc.source, n)
            # Done in an earlier run, or the same bytes met earlier in this one (docs/output.md).
            if (skip is not None and skip(doc.sha256, n)) or key in scheduled:
                if state is not None and key in state.failed:
                    stats.skipped_failed += 1
                else:
                    stats.skipped += 1
                events.skipped(PageItem(doc.source, doc.sha256, n, doc.page_count))
                continue
            scheduled.add(key)
            listing.tasks.append(PageTask(doc.source, path, doc.sha256, n, doc.page_count))
    return listing


def is_uri(path: str) -> bool:
    """An object-store (or other pyarrow file system) URI: ``s3://``, ``gs://``, ``file://``."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isidentifier()


def _uri_files(uri: str) -> list[str] | IxcdocError:
    """The file URIs under ``uri`` (itself if it is a file), in natural order; hidden names
    are skipped as in a local folder walk."""
    try:
        from pyarrow import fs as pafs
    except ImportError as e:
        raise UsageError(f'{uri}: reading URIs needs pyarrow: pip install "ixcdoc[ray]"') from e

    from ixcdoc.errors import InputError
    from ixcdoc.inputs import natural_key

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            return InputError(uri, "no such object or folder", code="not_found")
        if info.type != pafs.FileType.Directory:
            return [uri]
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:  # pyarrow's errors are OSError/ArrowInvalid(ValueError)
        return InputError(uri, f"cannot list: {e}", code="unreadable")
    prefix = uri.rstrip("/")
    files = []
    for f in found:
        rel = f.path[len(root.rstrip("/")) + 1 :]
        if f.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
            continue
        files.append((tuple(natural_key(p) for p in rel.split("/")), f"{prefix}/{rel}"))
    return [u for _, u in sorted(files)]


def read_uri(uri: str) -> bytes:
    """The bytes of one object (raises InputError)."""
    from pyarrow import fs as pafs

    from ixcdoc.errors import InputError

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise InputError(uri, f"cannot read: {e}", code="unreadable") from e


def _open_uri(uri: str, password: str | None, max_pixels: int | None) -> Document:
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_bytes

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return open_bytes(read_uri(uri), source=uri, password=password, max_pixels=limit)


def _documents(sources: Sources) -> Iterator[tuple[Document, list[int]] | IxcdocError]:
    """``Sources.documents`` in argument order, with object-store URIs read through pyarrow."""
    from ixcdoc.errors import InputError
    from ixcdoc.inputs import select_pages

    for arg in sources.paths:
        if not is_uri(arg):
            yield from sources.replace(paths=(arg,)).documents()
            continue
        files = _uri_files(arg)
        if isinstance(files, IxcdocError):
            yield files
            continue
        for uri in files:
            try:
                doc = _open_uri(uri, sources.password, sources.max_pixels)
            except InputError as e:
                yield e
                continue
            try:
                yield doc, select_pages(sources.pages, doc.page_count, source=uri)
            except InputError as e:
                yield e
            finally:
                doc.close()


# ---- the CPU tasks: render ---------------------------------------------------------------


def render_row(row: dict[str, Any], password: str | None, max_pixels: int | None) -> dict[str, Any]:
    """Open a listed page's file, render and blank-check the page (a Ray CPU task).

    The result travels as one pickled ``PageItem`` (a PIL image and, if the page could not
    be read, its error), so the page fails alone, as on one machine.
    """
    from ixcdoc.errors import InputError
    from ixcdoc.guards import is_blank
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_document

    task = PageTask(**{k: row[k] for k in ("source", "path", "sha256", "page", "page_count")})
    item = PageItem(task.source, task.sha256, task.page, task.page_count)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        opened = (
            _open_uri(task.path, password, max_pixels)
            if is_uri(task.path)
            else open_document(task.path, source=task.source, password=password, max_pixels=limit)
        )
        with opened as doc:
            if doc.sha256 != task.sha256:
                raise InputError(task.source, "changed while the run was listing it", code="input")
            r = doc.render(task.page)
            item.rendered = r
            # A page whose text layer has words is never blank, however faint its render.
            item.blank = is_blank(r.image) and not doc.has_text_layer(task.page)
    except InputError as e:
        item.error = e
    return {**row, "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}


# ---- the actors: the model ---------------------------------------------------------------


class ModelReplica:
    """One model replica (a Ray actor): loads the model once, turns pages into records."""

    def __init__(self, job: Job, model: str, device: str, quant: str) -> None:
        import socket

        from ixcdoc.runtime import load

        self.job = job
        # ``model`` is the driver's name for it (a folder's absolute path, or a hub id), so
        # the records name it as one machine would; the revision is the loaded model's.
        self.runner = PageRunner(model, None, device)
        self.runner.attach(load(model, device=device, quant=quant))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Records (as JSON lines) for a batch of rendered pages."""
        import numpy as np

        out = []
        for blob in batch["item"]:
            item: PageItem = pickle.loads(blob)
            rec = self.runner.run_page(item, self.job)
            out.append(dataclasses.replace(rec, worker=self.worker).to_json())
        return {"record": np.array(out, dtype=object)}


# ---- Ray ---------------------------------------------------------------------------------


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


def _pipeline(
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
        },
        compute=ActorPoolStrategy(size=replicas),
        batch_size=options.batch_size,
        num_gpus=gpus,
        num_cpus=cpus,
        batch_format="numpy",
        # Ray Data's actor pools restart a replica that dies (OOM, kill -9, a lost node) and
        # retry its batch (max_restarts=-1, max_task_retries=-1 by default): not set here.
    )
    for row in ds.iter_rows():
        yield PageRecord.from_dict(json.loads(row["record"]))


def _unwrap(e: BaseException) -> BaseException:
    """The ixcdoc error inside a Ray task error (a bad model path, say), else ``e``."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        if isinstance(cur, IxcdocError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
        seen += 1
    return e


def run_ray(
    job: Job,
    sources: Sources,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    quant: str = "auto",
    output: str | os.PathLike[str] | None = None,
    json_stream: TextIO | None = None,
    redo_failed: bool = False,
    events: Events | None = None,
    ray: RayOptions | None = None,
) -> BatchStats:
    """``batch.run`` on Ray Data: the same records, resume and skip rules, many replicas.

    ``output``: a JSONL file, or a folder (``DIR/``) that gets one new shard per run and whose
    shards together are the resume state. Records carry ``worker`` (host:pid of the replica).
    """
    from ixcdoc.batch import _outputs
    from ixcdoc.hub import local_revision, model_name
    from ixcdoc.records import load_existing, load_shards, resume_key

    options = ray or RayOptions()
    events = events or Events()
    model_arg = None if model is None else os.fspath(model)
    # A local folder becomes its absolute path (Ray's workers run elsewhere), a hub id stays.
    name = model_name(model_arg)
    runner = PageRunner(name, local_revision(model_arg), device)
    state = None
    target = output
    if output is not None:
        if is_shard_dir(output):
            if Path(output).is_dir():
                state = load_shards(output)
            else:
                from ixcdoc.records import ResumeState

                state = ResumeState(path=Path(output))
            target = shard_output(output)
        else:
            state = load_existing(output)
        if state.repaired_bytes:
            events.note(
                f"repaired {output}: cut a torn last line ({state.repaired_bytes} bytes) "
                "left by an interrupted run"
            )
    stats = BatchStats()
    listing = list_pages(
        job, sources, runner, state, redo_failed=redo_failed, stats=stats, events=events
    )
    seen: set[ResumeKey] = set()
    by_key = {runner.key(job, t.sha256, t.source, t.page): t for t in listing.tasks}
    with _outputs(target, json_stream) as writers:

        def sink(item: PageItem, rec: PageRecord) -> None:
            # Written before the state hears of it: a crash never marks an unwritten page done.
            for w in writers:
                w.write(rec)
            if state is not None:
                state.add(rec)
            if rec.status == "ok":
                stats.ok += 1
                stats.blank += "blank" in rec.flags
                stats.flagged += bool({"repetition", "tier_fallback"} & set(rec.flags))
            else:
                stats.failed += 1
            events.record(item, rec)

        for err_item in listing.file_errors:
            sink(err_item, runner.run_page(err_item, job))
        todo = listing.tasks
        if not todo:
            return stats
        ray_mod: Any
        with ray_session(options, options.replicas) as ray_mod:
            for _ in range(PASSES):
                try:
                    for rec in _pipeline(
                        ray_mod,
                        todo,
                        job,
                        sources,
                        model=name,
                        device=device,
                        quant=quant,
                        options=options,
                    ):
                        key = resume_key(rec)
                        if key in seen:  # a retried batch delivered twice: keep the first
                            continue
                        seen.add(key)
                        stats.loaded = True
                        item = PageItem(rec.source, rec.content_sha256, rec.page, rec.page_count)
                        sink(item, rec)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    inner = _unwrap(e)
                    if inner is not e:
                        raise inner from None
                    raise
                todo = [t for k, t in by_key.items() if k not in seen]
                if not todo:
                    break
    if todo:
        stats.failed += len(todo)
        events.note(
            f"{len(todo)} pages got no record (their replicas kept failing); "
            "run the same command again to retry them"
        )
    return stats
