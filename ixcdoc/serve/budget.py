"""Decoded pixels in flight across requests, bounded: a semaphore counted in pixels.

A page costs its native pixels (3 bytes each, RGB) from the moment it is decoded until it is
shrunk to its tier's size; ``async with budget.hold(n)`` waits until ``n`` more pixels fit
under the capacity. The invariant: ``used <= capacity``, and waiters are served in arrival
order, so the head of the queue is never overtaken (small pages behind a large one would
otherwise starve it). Event-loop only: no locks, one loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class PixelBudget:
    """At most ``capacity`` pixels held at once by ``hold``; a page over it runs alone."""

    def __init__(self, capacity: int) -> None:
        """``capacity`` in pixels (>= 1)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Holders waiting for room."""
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` (capped at the capacity) for the body of the ``async with``."""
        n = max(0, min(pixels, self.capacity))
        await self._acquire(n)
        try:
            yield
        finally:
            self._release(n)

    async def _acquire(self, n: int) -> None:
        if not self._waiting and self.used + n <= self.capacity:
            self.used += n
            return
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self._release(n)  # granted just as it was cancelled: give it back
            else:
                self._waiting.remove(entry)
                self._grant()  # it may have been the head that held the others back
            raise

    def _release(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            n, future = self._waiting.popleft()
            self.used += n
            future.set_result(None)
