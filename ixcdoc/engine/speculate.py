"""How much to speculate: per sequence from its running acceptance, per step from the measured
step cost (no torch here; ``decode.py`` runs the verification forward).

Per sequence (``SeqSpec``): ``alpha``, an EWMA of the fraction of proposed tokens the model
accepted (start ``ALPHA0``, weight ``EWMA_W``), and the same per source (draft text, own
output): where both match, the one accepted more often lately proposes. Below ``FLOOR`` the
sequence stops drafting for ``backoff`` steps (8, doubling to 64 while drafts keep
failing; a fully accepted proposal resets it), then tries again from ``RETRY_ALPHA``.

Per step (``StepCost.choose``): k, the most draft tokens any row feeds, from ``K_CHOICES`` (0:
a plain one-token step). Every row of a step is padded to k + 1 positions, so k is one value
per step. Expected tokens of a step with k: sum over rows of 1 + a + a^2 + ... + a^min(k, n)
(a the row's alpha, n its proposal's length); its cost: the measured wall time of steps with
that k at this batch size bucket (an EWMA per (bucket, k); the first step at a bucket is a
plain one, the yardstick; a k not measured yet is interpolated between the measured ones
around it, or above them all assumed to cost what the largest measured one costs, so that it
is tried). The k with the most expected tokens per second wins (k > 0 only by ``MARGIN``
over a plain step: the estimates are noisy), so a step that turns compute-bound (the CPU
proxy at batch 64, a GPU past its ridge) stops speculating by measurement. On CUDA k is
also capped by the arithmetic rule of docs/throughput.md: at most ``CUDA_STEP_TOKENS``
tokens per step (rows x (k + 1)). A k whose verify step ran out of memory at a bucket is not
tried there again, nor any larger one, until the batch empties (``StepCost.out_of_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ixcdoc.engine.draft import DRAFT, OWN, Proposer

K_CHOICES = (1, 2, 4, 8)  # draft tokens per row a step may feed (besides 0)
ALPHA0 = 0.5  # a new sequence's acceptance estimate
EWMA_W = 0.3  # weight of the newest step in the acceptance EWMA
FLOOR = 0.05  # below it a sequence stops drafting for a while
RETRY_ALPHA = 0.2  # the estimate it retries with after the pause
BACKOFF = (8, 64)  # steps a failing sequence pauses: first, most (doubling in between)
COST_W = 0.2  # weight of the newest step in the step-cost EWMA
MARGIN = 0.05  # a speculative step must promise this much more than a plain one
# A bf16 decode step reads each weight (2 bytes) once and does 2 FLOP per weight per token:
# ~1 FLOP per weight byte per token. An H100's ridge is ~800 TFLOP/s / 3.0 TB/s ~ 267 FLOP
# per byte (docs/throughput.md), so past ~256 tokens per step the arithmetic, not the
# reading, sets a step's time (the live KV cache only adds reads, so this is conservative).
CUDA_STEP_TOKENS = 256


@dataclass
class SeqSpec:
    """One greedy sequence's speculation state."""

    proposer: Proposer
    alpha: float = ALPHA0
    paused_until: int = 0  # engine step before which it does not draft
    backoff: int = BACKOFF[0]
    proposed: int = 0  # draft tokens fed for verification, in all
    accepted: int = 0  # of those, the ones the model produced itself
    # the same EWMA per source (the draft text, the own output): the better one goes first
    # (the own output starts at 0: it goes first only once it has done better than the draft)
    by_source: dict[str, float] = field(default_factory=lambda: {DRAFT: ALPHA0, OWN: 0.0})

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens from the proposer, the source accepted more often lately first."""
        return self.proposer.propose(k, own_first=self.by_source[OWN] > self.by_source[DRAFT])

    def drafting(self, step: int) -> bool:
        """Whether it proposes at engine step ``step``."""
        return step >= self.paused_until

    def update(self, proposed: int, accepted: int, step: int, source: str | None = None) -> None:
        """``accepted`` of ``proposed`` fed draft tokens (from ``source``) were the model's
        own choice."""
        if proposed <= 0:
            return
        self.proposed += proposed
        self.accepted += accepted
        rate = accepted / proposed
        self.alpha = (1 - EWMA_W) * self.alpha + EWMA_W * rate
        if source in self.by_source:
            self.by_source[source] = (1 - EWMA_W) * self.by_source[source] + EWMA_W * rate
        if accepted == proposed:
            self.backoff = BACKOFF[0]
        elif self.alpha < FLOOR:
            self.paused_until = step + self.backoff
            self.backoff = min(2 * self.backoff, BACKOFF[1])
            self.alpha = RETRY_ALPHA


def expected_tokens(alpha: float, n: int) -> float:
    """Tokens a row expects from one step that verifies ``n`` draft tokens: 1 + a + ... + a^n."""
    return sum(alpha**j for j in range(n + 1))


@dataclass
class StepCost:
    """Measured step times per (batch bucket, k) and the choice of k."""

    cuda: bool = False
    seconds: dict[tuple[int, int], float] = field(default_factory=dict)
    # batch bucket -> the least k whose verify step ran out of memory there: only less after
    # (the engine clears it when the batch empties, as it lifts its row cap)
    too_big: dict[int, int] = field(default_factory=dict)

    def out_of_memory(self, bucket: int, k: int) -> None:
        """A verify step of ``k`` draft tokens at ``bucket`` rows ran out of memory: from now
        on that bucket's steps feed fewer (each try costs a failed forward and a release)."""
        self.too_big[bucket] = min(k, self.too_big.get(bucket, k))

    def batch_emptied(self) -> None:
        """The engine's batch emptied: every k may be tried again (as the row cap lifts)."""
        self.too_big.clear()

    def record(self, bucket: int, k: int, seconds: float) -> None:
        """A step of ``bucket`` rows (a power of two) and ``k`` draft tokens took ``seconds``."""
        old = self.seconds.get((bucket, k))
        self.seconds[(bucket, k)] = (
            seconds if old is None else (1 - COST_W) * old + COST_W * seconds
        )

    def choose(self, bucket: int, rows: int, drafts: list[tuple[float, int]], cap: int) -> int:
        """k for a step of ``rows`` rows (``bucket``: their power-of-two bucket); ``drafts``:
        (alpha, proposal length) of each row that has a proposal (a row gets one token
        whatever k); ``cap``: the most positions any row may add (its slot's end)."""
        longest = max((n for _, n in drafts), default=0)
        if longest == 0:
            return 0
        cap = min(cap, self.too_big.get(bucket, cap + 1) - 1)
        ks = [k for k in K_CHOICES if k <= cap and (k == K_CHOICES[0] or k // 2 < longest)]
        if self.cuda:
            ks = [k for k in ks if bucket * (k + 1) <= CUDA_STEP_TOKENS]
        measured = {k: t for (b, k), t in self.seconds.items() if b == bucket}
        if not ks or 0 not in measured:  # a plain step at this size first: the yardstick
            return 0
        best, best_rate = 0, rows / max(measured[0], 1e-9) * (1 + MARGIN)
        for k in ks:
            gain = sum(expected_tokens(a, min(k, n)) - 1 for a, n in drafts)
            rate = (rows + gain) / max(_estimate(measured, k), 1e-9)
            if rate > best_rate:
                best, best_rate = k, rate
        return best


def _estimate(measured: dict[int, float], k: int) -> float:
    """A step's cost with ``k`` draft tokens (``measured`` holds k = 0): measured; else
    linear between the nearest measured k below and above; else (above every measured k) the
    largest measured one's cost, an optimistic guess, so that it gets tried and measured."""
    if k in measured:
        return measured[k]
    lo = max(j for j in measured if j < k)
    above = [j for j in measured if j > k]
    if not above:
        return measured[lo]
    hi = min(above)
    return measured[lo] + (measured[hi] - measured[lo]) * (k - lo) / (hi - lo)
