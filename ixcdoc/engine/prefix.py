"""The prefix cache: the KV of prompts' shared leading text, kept and copied into new slots.

Every page of a job starts with the same system prompt and user-turn opening. The first time
the engine prefills such a prompt it keeps a copy of that prefix's KV; a later prompt with the
same leading ids gets the copy written into its slot row and prefills only the rest. Bounded:
at most ``PREFIX_CACHE_ENTRIES`` prefixes and one slot's positions in all (a client's giant
system prompts must not pin GPU memory), least recently used dropped first; a prefix over half
a slot is never kept (it would crowd out every other one, and prefilling it is the lesser cost).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ixcdoc.engine.prompts import Part
from ixcdoc.prompt import TextPart

if TYPE_CHECKING:
    from ixcdoc.engine.runner import ModelRunner

PREFIX_CACHE_ENTRIES = 8  # distinct system prompts kept (and one slot's positions in all)
Key = tuple[int, ...]


def prefix_key(parts: list[Part], prompt_len: int) -> Key | None:
    """The prompt's reusable prefix: its leading text (the system prompt and the user turn's
    opening) when an image follows it, as token ids; None if there is none."""
    if len(parts) < 2 or not isinstance(parts[0], TextPart):
        return None
    ids = tuple(parts[0].ids)
    return ids if 0 < len(ids) < prompt_len else None


class PrefixCache:
    """Saved prefixes (LRU, token ids -> per-layer KV) over one runner's slot cache."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.saved: OrderedDict[Key, Any] = OrderedDict()
        self.hits = 0  # prompts that reused a saved prefix

    def __contains__(self, key: Key) -> bool:
        return key in self.saved

    def keepable(self, key: Key) -> bool:
        """A prefix the cache may keep: at most half a slot."""
        return len(key) <= self.runner.max_len // 2

    def save(self, key: Key, row: int) -> None:
        """Keep the KV of ``key``'s positions from cache row ``row``, within the bounds."""
        if not self.keepable(key):
            return
        self.saved[key] = self.runner.save_prefix(row, len(key))
        while (
            len(self.saved) > PREFIX_CACHE_ENTRIES
            or sum(len(k) for k in self.saved) > self.runner.max_len
        ):
            self.saved.popitem(last=False)

    def load(self, key: Key | None, row: int) -> int:
        """Write the saved prefix ``key`` into positions 0.. of ``row``; the positions it
        filled (0 when the cache does not hold it)."""
        if key is None or (kv := self.saved.get(key)) is None:
            return 0
        self.saved.move_to_end(key)
        self.runner.load_prefix(row, kv)
        self.hits += 1
        return len(key)
