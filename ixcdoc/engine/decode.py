"""The decode step: one forward for every running row, then each row's token.

Rows in use are ``0..used-1`` (``SlotTable``), so the step feeds the leading rows their next
token and position and reads back one logits row each. Greedy rows share one argmax over the
batch and one device-to-host read per step; sampled, penalised and beam rows choose their own.
After a step runs out of memory the engine decodes only rows ``0..row_cap-1`` (a power of two,
a captured step's own bucket) until the batch empties; sequences above the cap wait, keeping
their rows and tokens, and only one that does not fit even alone fails ('oom'). Mixed into
``Engine``: it uses the engine's runner, slots, running list and hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ixcdoc.engine import finish
from ixcdoc.engine.finish import oom_error
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


class Decoding:
    """``Engine``'s decode step (see the module docstring)."""

    def _decode(self: Engine) -> None:
        """One decode forward for the running rows: every row, or rows 0..row_cap-1 after a
        step ran out of memory (``running`` holds rows 0..used-1)."""
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
            # Rows below k of a sequence that straddles k are fed their own next token: the
            # step writes what their own later step writes again, and their logits are unused.
            ids, pos = _feed(self.running, k)
            try:
                logits = self.runner.decode(ids, pos)  # [k, V]
                break
            except torch.cuda.OutOfMemoryError:
                # Make room without losing work: the sequences on the top rows wait (keeping
                # their rows and tokens) until rows below the cap free up; only a sequence that
                # does not fit even alone fails, with 'oom' (callers retry it a tier lower).
                self.runner.release_memory()
                if k == 1:
                    self._leave(running[0])
                    finish.fail(running[0], oom_error(running[0].request))
                    if not self.running:
                        return
                    continue
                self.row_cap = 1 << ((k - 1).bit_length() - 1)  # the power of two below k
        self.steps += 1
        self._decoded(running, logits)

    def _decoded(self: Engine, running: list[Sequence], logits: torch.Tensor) -> None:
        """Choose every decode row's token from its logits [used, V]; finished ones leave.
        A sequence whose own token choice fails (sampling from NaN probabilities, say) fails
        alone; every other row's token is kept."""
        plain = [s for s in running if s.beam is None]
        special = [s for s in plain if s.config.do_sample or s.generated is not None]
        # greedy rows: one argmax over the batch; sampled or penalised rows overwrite theirs
        chosen = logits.argmax(-1)  # [used]
        failed: dict[Sequence, Exception] = {}
        for seq in special:
            r = seq.rows[0]
            try:
                chosen[r] = choose_token(logits[r], seq.history, seq.config, seq.generator)
            except Exception as e:
                failed[seq] = e
        if self.logits_hook is not None:
            for seq in plain:
                self.logits_hook(seq.handle, logits[seq.rows[0]])
        tokens = chosen.tolist() if plain else []  # the one device-to-host read per step
        finished: list[Sequence] = []
        for seq in running:
            if seq in failed:
                continue
            if seq.beam is not None:
                if self.logits_hook is not None:
                    for r in seq.rows:
                        self.logits_hook(seq.handle, logits[r])
                try:
                    finish.beam_step(seq, logits[seq.rows], self.runner)
                except Exception as e:
                    failed[seq] = e
                    continue
            else:
                finish.accept(seq, tokens[seq.rows[0]], self.stop_ids)
            if seq.stop_reason is not None:
                finished.append(seq)
        # Rows move as sequences leave: only now, after every row's logits were read.
        for seq in finished:
            self._leave(seq)
            finish.complete(seq, self.loaded.tokenizer)
        for seq, e in failed.items():
            self._fail_alone(seq, e)
