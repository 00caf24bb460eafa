"""Draft proposals for speculative decoding: n-gram lookup in a draft text and the own output.

Pure Python (no torch). A ``Proposer`` holds one sequence's tokenized draft (a page's text
layer, say) indexed by n-grams, and an index of the sequence's own output that grows by one
entry per n per generated token. ``propose(k)`` takes the last n generated tokens, n from
``MAX_N`` down to ``MIN_N`` (longest first), and looks them up:

- in the draft: the first occurrence that continues after the cursor (the draft position
  right after the last verified proposal, which the model's own next token took), else the
  first one; it proposes the draft tokens that follow;
- else earlier in the own output (the latest occurrence; repeated table rows): the tokens that
  followed it there. The caller may put the own output first (``own_first``: its proposals
  have been accepted more often lately than the draft's).

Only generated tokens are matched (never the prompt). The engine verifies every proposal
exactly (``decode.py``) and reports back how many tokens were accepted (``accepted``), which
moves the cursor. Each lookup is a few dict probes and a bisect: constant time per step.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

MAX_N = 4  # longest n-gram matched
MIN_N = 1  # shortest n-gram matched
DRAFT = "draft"  # where a proposal came from: the draft text
OWN = "own"  # or the sequence's own earlier output


class Proposer:
    """One sequence's n-gram proposer over its draft tokens and its own output."""

    def __init__(self, draft: Sequence[int], max_n: int = MAX_N, min_n: int = MIN_N) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.draft = list(draft)
        self.max_n, self.min_n = max_n, min_n
        # n-gram -> sorted draft positions right after its occurrences
        self._draft: dict[tuple[int, ...], list[int]] = {}
        for n in range(min_n, max_n + 1):
            for i in range(len(self.draft) - n + 1):
                self._draft.setdefault(tuple(self.draft[i : i + n]), []).append(i + n)
        self.output: list[int] = []
        # n-gram -> the latest own-output position right after it, excluding the current end
        self._own: dict[tuple[int, ...], int] = {}
        self.cursor = 0  # draft position right after the last verified draft tokens
        self._last: tuple[str, int] | None = None  # (source, start) of the last proposal
        self._resume = False  # the last draft proposal failed: try right after the miss
        self._resumed = False  # the last proposal was such a try

    def extend(self, tokens: Iterable[int]) -> None:
        """Append generated tokens to the own output (and index it)."""
        out = self.output
        for t in tokens:
            out.append(t)
            end = len(out) - 1  # n-grams ending just before the newest token: a continuation
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._own[tuple(out[end - n : end])] = end

    def propose(self, k: int, own_first: bool = False) -> list[int]:
        """Up to ``k`` tokens likely to follow the output (empty: no n-gram matched).
        ``own_first``: where both match at the same n, the own output's continuation (the
        caller's choice: its proposals have been accepted more often lately)."""
        self._last = None
        out = self.output
        if k < 1 or not out:
            return []
        if self._resume and self.cursor < len(self.draft):
            # the model wrote its own token where the draft had another (a substitution, a
            # misread character): the draft likely goes on right after it
            self._resume = False
            self._last = (DRAFT, self.cursor)
            self._resumed = True
            return self.draft[self.cursor : self.cursor + k]
        self._resume = self._resumed = False
        for n in range(min(self.max_n, len(out)), self.min_n - 1, -1):
            key = tuple(out[-n:])
            own = self._own.get(key, -1)
            if own_first and own >= 0:
                self._last = (OWN, own)
                return out[own : own + k]
            starts = self._draft.get(key)
            if starts:
                # right after the cursor: the output's last token is the draft's at the cursor
                i = bisect_left(starts, self.cursor + 1)
                start = starts[i] if i < len(starts) else starts[0]
                if start < len(self.draft):
                    self._last = (DRAFT, start)
                    return self.draft[start : start + k]
            if own >= 0:
                self._last = (OWN, own)
                return out[own : own + k]
        return []

    @property
    def source(self) -> str | None:
        """Where the last proposal came from (``DRAFT`` or ``OWN``), None if there was none."""
        return None if self._last is None else self._last[0]

    def accepted(self, m: int, proposed: int) -> None:
        """``m`` of the ``proposed`` tokens of the last proposal were the model's: a draft
        proposal moves the cursor past them, and past the draft token the model did not take
        (once in a row the next proposal then resumes there)."""
        if self._last is not None and self._last[0] == DRAFT:
            start = self._last[1]
            if m < proposed:
                self.cursor = start + m + 1
                self._resume = m > 0 or not self._resumed  # a resume that missed at once: no
            else:
                self.cursor = start + m
        self._last = None
