"""A fake Ray for the distributed rules: ``ray_session`` yields it, and the dataset that
``cluster.run_pages`` builds runs here, in this process, in order: each ``map`` row by row,
each ``map_batches`` on one instance of the replica class, in calls of ``batch_size`` rows
(numpy batches, as Ray Data hands them). Only the part of Ray's API ixcdoc uses.

``plans`` keeps what every ``map_batches`` was asked for (pool size, batch size, resources),
so the tests can check the plan as well as the records.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest


@dataclass
class ActorPoolStrategy:
    size: int


class DataContext:
    _current: DataContext | None = None

    enable_progress_bars = True
    print_on_execution_start = True

    @classmethod
    def get_current(cls) -> DataContext:
        if cls._current is None:
            cls._current = cls()
        return cls._current


@dataclass
class Dataset:
    rows: list[dict[str, Any]]
    plans: list[dict[str, Any]]

    def map(
        self, fn: Callable[..., dict[str, Any]], *, fn_kwargs: dict[str, Any], **opts: Any
    ) -> Dataset:
        return Dataset([fn(row, **fn_kwargs) for row in self.rows], self.plans)

    def map_batches(
        self,
        cls: type,
        *,
        fn_constructor_kwargs: dict[str, Any],
        compute: ActorPoolStrategy,
        batch_size: int,
        batch_format: str,
        **opts: Any,
    ) -> Dataset:
        assert batch_format == "numpy"
        self.plans.append({"replicas": compute.size, "batch_size": batch_size, **opts})
        replica = cls(**fn_constructor_kwargs)
        out: list[dict[str, Any]] = []
        for start in range(0, len(self.rows), batch_size):
            chunk = self.rows[start : start + batch_size]
            batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in chunk[0]}
            result = replica(batch)
            out += [dict(zip(result, v, strict=True)) for v in zip(*result.values(), strict=True)]
        return Dataset(out, self.plans)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        yield from self.rows


@dataclass
class FakeRay:
    """``ray`` as ``run_pages`` uses it: the cluster's resources and ``ray.data``."""

    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 2.0})
    plans: list[dict[str, Any]] = field(default_factory=list)

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def module(self) -> tuple[types.ModuleType, types.ModuleType]:
        """(``ray``, ``ray.data``) as modules, for ``sys.modules``."""
        data = types.ModuleType("ray.data")
        data.ActorPoolStrategy = ActorPoolStrategy  # type: ignore[attr-defined]
        data.DataContext = DataContext  # type: ignore[attr-defined]
        data.from_items = self.from_items  # type: ignore[attr-defined]
        ray = types.ModuleType("ray")
        ray.data = data  # type: ignore[attr-defined]
        ray.cluster_resources = self.cluster_resources  # type: ignore[attr-defined]
        return ray, data

    def from_items(self, rows: list[dict[str, Any]], **opts: Any) -> Dataset:
        return Dataset(list(rows), self.plans)

    @contextlib.contextmanager
    def session(self, options: Any, replicas: int | None = None) -> Iterator[Any]:
        """Stands in for ``cluster.ray_session``: this fake, as the ``ray`` module."""
        yield sys.modules["ray"]


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeRay) -> None:
    """Make ``import ray`` give the fake, and the driver's Ray session yield it."""
    from ixcdoc.distributed import driver

    ray, data = fake.module()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.data", data)
    monkeypatch.setattr(driver, "ray_session", fake.session)
