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

``listing`` (the driver's listing and resume filter, URIs), ``workers`` (the render task and
the model replica), ``cluster`` (Ray: session, replica plan, the dataset), ``driver``
(``run_ray``). Ray is imported only inside functions: importing this package does not.
"""

from ixcdoc.distributed.cluster import RayOptions, ray_session, replica_plan, run_pages
from ixcdoc.distributed.driver import run_ray
from ixcdoc.distributed.listing import PageTask, is_uri, list_pages, read_uri
from ixcdoc.distributed.workers import ModelReplica, render_row
from ixcdoc.records import is_shard_dir

__all__ = [
    "ModelReplica",
    "PageTask",
    "RayOptions",
    "is_shard_dir",
    "is_uri",
    "list_pages",
    "ray_session",
    "read_uri",
    "render_row",
    "replica_plan",
    "run_pages",
    "run_ray",
]
