"""The decode step: one forward for every running row, then each row's token(s).

Rows in use are ``0..used-1`` (``SlotTable``), so the step feeds the leading rows their next
token and position and reads back one logits row each. Greedy rows share one argmax over the
batch and one device-to-host read per step; sampled, penalised and beam rows choose their own.
After a step runs out of memory the engine decodes only rows ``0..row_cap-1`` (a power of two,
a captured step's own bucket) until the batch empties; sequences above the cap wait, keeping
their rows and tokens, and only one that does not fit even alone fails ('oom'). Mixed into
``Engine``: it uses the engine's runner, slots, running list and hooks.

Speculation (docs/architecture.md, Speculative decoding): greedy sequences propose draft
tokens (``draft.Proposer``); when ``speculate.StepCost`` picks k > 0 the step feeds every row
its last token plus up to k draft tokens, padded to k + 1 positions (the padding sits past the
row's live length, where a later step writes before anything attends to it), and each row
keeps the longest prefix of its draft that equals the model's greedy choice, plus the model's
next token. Every kept token goes through ``finish.accept`` one by one, with its own logits
through the logits hook, so callers see exactly greedy decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ixcdoc.engine import finish
from ixcdoc.engine.finish import oom_error
from ixcdoc.engine.runner import bucket_for
from ixcdoc.engine.speculate import K_CHOICES
from ixcdoc.generate import choose_token

if TYPE_CHECKING:
    from ixcdoc.engine.engine import Engine
    from ixcdoc.engine.sequence import Sequence


def _feed(running: list[Sequence], used: int) -> tuple[list[int], list[int]]:
    """Next input token and position of every decode row 0..used-1 (rows above: not fed)."""
    ids = [0] * used
    pos = [0] * used
    for seq in running:
        p = seq.next_position
        for j, r in enumerate(seq.rows):
            if r < used:
                ids[r], pos[r] = seq.feed[j], p
    return ids, pos


@dataclass
class _Verify:
    """A speculative step's layout: every row fed ``k + 1`` positions (its draft, then padding)."""

    k: int
    ids: list[list[int]] = field(default_factory=list)  # [rows][k + 1]
    pos: list[list[int]] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)  # flat b * (k + 1) + j of the real tokens
    first: list[int] = field(default_factory=list)  # row b's first logits row among ``keep``
    drafts: dict[Sequence, list[int]] = field(default_factory=dict)  # the draft each row fed


class Decoding:
    """``Engine``'s decode step (see the module docstring)."""

    def _decode(self: Engine) -> None:
        """One decode forward for the running rows: every row, or rows 0..row_cap-1 after a
        step ran out of memory (``running`` holds rows 0..used-1)."""
        speculate = True
        while True:
            used = self.slots.used
            k = used if self.row_cap is None else min(used, self.row_cap)
            running = [s for s in self.running if max(s.rows) < k]
            if not running:  # the sequence at row 0 alone is wider than what fits (beams)
                first = next(s for s in self.running if 0 in s.rows)
                self._leave(first)
                finish.fail(first, oom_error(first.request))
                if not self.running:
                    return
                continue
            plan = self._plan(running, k) if speculate and self.row_cap is None else None
            t0 = time.perf_counter()
            try:
                if plan is not None:
                    logits = self.runner.verify(plan.ids, plan.pos, plan.keep)  # [N, V]
                else:
                    # Rows below k of a sequence that straddles k are fed their own next token:
                    # the step writes what their own later step writes again, and their logits
                    # are unused.
                    ids, pos = _feed(self.running, k)
                    logits = self.runner.decode(ids, pos)  # [k, V]
                break
            except torch.cuda.OutOfMemoryError:
                self.runner.release_memory()
                if plan is not None:  # a plain step needs less: try that first
                    self.costs.out_of_memory(bucket_for(k, self.n_slots), plan.k)
                    speculate = False
                    continue
                # Make room without losing work: the sequences on the top rows wait (keeping
                # their rows and tokens) until rows below the cap free up; only a sequence that
                # does not fit even alone fails, with 'oom' (callers retry it a tier lower).
                if k == 1:
                    self._leave(running[0])
                    finish.fail(running[0], oom_error(running[0].request))
                    if not self.running:
                        return
                    continue
                self.row_cap = 1 << ((k - 1).bit_length() - 1)  # the power of two below k
        self.steps += 1
        self._decoded(running, logits, plan)
        self.costs.record(
            bucket_for(k, self.n_slots), 0 if plan is None else plan.k, self._t_read - t0
        )

    def _plan(self: Engine, running: list[Sequence], rows: int) -> _Verify | None:
        """The speculative layout of this step, or None for a plain one-token step."""
        drafts: dict[Sequence, list[int]] = {}
        for seq in running:
            sp = seq.spec
            if sp is None or not sp.drafting(self.steps):
                continue
            sp.proposer.extend(seq.tokens[len(sp.proposer.output) :])
            room = seq.budget - len(seq.tokens) - 1  # never past the budget
            draft = sp.propose(min(K_CHOICES[-1], room))
            if draft:
                drafts[seq] = draft
        if not drafts:
            return None
        # padding continues each row's positions: none may pass the end of its slot
        cap = min(self.max_len - 1 - seq.next_position for seq in running)
        k = self.costs.choose(
            bucket_for(rows, self.n_slots),
            rows,
            [(seq.spec.alpha, len(d)) for seq, d in drafts.items() if seq.spec is not None],
            cap,
        )
        if k == 0:
            return None
        plan = _Verify(k, [[]] * rows, [[]] * rows, first=[0] * rows)
        width = k + 1
        real = [1] * rows  # tokens of row r that are not padding
        for seq in running:
            p = seq.next_position
            draft = drafts.get(seq, [])[:k]
            if draft:
                plan.drafts[seq] = draft
            for j, r in enumerate(seq.rows):
                feed = [seq.feed[j], *draft]
                plan.ids[r] = feed + [0] * (width - len(feed))
                plan.pos[r] = list(range(p, p + width))
                real[r] = len(feed)
        for r in range(rows):
            plan.first[r] = len(plan.keep)
            plan.keep += range(r * width, r * width + real[r])
        return plan

    def _decoded(
        self: Engine, running: list[Sequence], logits: torch.Tensor, plan: _Verify | None = None
    ) -> None:
        """Choose every decode row's token(s) from its logits (plain: [used, V], row r at r; a
        speculative step: [N, V], row r's positions from ``plan.first[r]``); finished ones
        leave. A sequence whose own token choice fails (sampling from NaN probabilities, say)
        fails alone; every other row's token is kept."""
        at = range(logits.shape[0]) if plan is None else plan.first
        plain = [s for s in running if s.beam is None]
        special = [s for s in plain if s.config.do_sample or s.generated is not None]
        # greedy rows: one argmax over the batch; sampled or penalised rows overwrite theirs
        chosen = logits.argmax(-1)  # [used] or [N]
        failed: dict[Sequence, Exception] = {}
        for seq in special:
            r = at[seq.rows[0]]
            try:
                chosen[r] = choose_token(logits[r], seq.history, seq.config, seq.generator)
            except Exception as e:
                failed[seq] = e
        drafts = {} if plan is None else plan.drafts
        if self.logits_hook is not None:
            for seq in plain:
                if seq not in drafts:
                    self.logits_hook(seq.handle, logits[at[seq.rows[0]]])
        tokens = chosen.tolist() if plain else []  # the one device-to-host read per step
        self._t_read = time.perf_counter()
        finished: list[Sequence] = []
        for seq in running:
            if seq in failed:
                continue
            if seq.beam is not None:
                rows = [at[r] for r in seq.rows]
                if self.logits_hook is not None:
                    for r in rows:
                        self.logits_hook(seq.handle, logits[r])
                try:
                    finish.beam_step(seq, logits[rows], self.runner)
                except Exception as e:
                    failed[seq] = e
                    continue
            elif seq in drafts:
                self._verified(seq, drafts[seq], logits, tokens, at[seq.rows[0]])
            else:
                finish.accept(seq, tokens[at[seq.rows[0]]], self.stop_ids)
            if seq.stop_reason is not None:
                finished.append(seq)
        # Rows move as sequences leave: only now, after every row's logits were read.
        for seq in finished:
            self._leave(seq)
            finish.complete(seq, self.loaded.tokenizer)
        for seq, e in failed.items():
            self._fail_alone(seq, e)

    def _verified(
        self: Engine,
        seq: Sequence,
        draft: list[int],
        logits: torch.Tensor,
        tokens: list[int],
        first: int,
    ) -> None:
        """Keep the longest prefix of ``draft`` that is the model's greedy choice, plus the
        model's next token, each through ``finish.accept`` (the stop rules, callbacks) and the
        logits hook in turn; ``first``: the row's first position among ``logits``/``tokens``."""
        matched = 0
        for j in range(len(draft) + 1):
            if self.logits_hook is not None:
                self.logits_hook(seq.handle, logits[first + j])
            tok = tokens[first + j]
            finish.accept(seq, tok, self.stop_ids)
            if seq.stop_reason is not None or j == len(draft) or tok != draft[j]:
                break
            matched += 1  # the model chose the draft's token: the next position is valid
        seq.accepted += matched
        sp = seq.spec
        if sp is not None:
            source = sp.proposer.source
            sp.proposer.accepted(matched, len(draft))
            sp.update(len(draft), matched, self.steps, source)
