"""Beam search with Hugging Face transformers' semantics (its ``_beam_search``, 4.5x/5.x).

Per step, for ``num_beams`` running beams with accumulated log-probabilities:

1. log_softmax of each beam's logits (the repetition penalty, when set, then applies to these
   log-probabilities, as HF's processors run after the log_softmax), plus the beam's score;
2. the top ``max(2, 1 + n_stop_ids) * num_beams`` continuations over all beams x vocabulary;
3. a continuation "hits the stopping criteria" when its token is a stop id or it reaches
   ``max_new_tokens``; the best ``num_beams`` that do not hit keep running;
4. those that hit, and rank among the first ``num_beams``, become finished hypotheses scored
   ``sum_logprobs / generated_len ** length_penalty`` (the stop token counted in the length);
   the ``num_beams`` best finished ones are kept;
5. ``early_stopping=False`` heuristic: stop once the best running beam, normalised by the
   current length, cannot beat the worst kept hypothesis (and all ``num_beams`` are filled),
   or when every continuation hit the stopping criteria.

The answer is the best finished hypothesis without its stop token. Everything is [num_beams]
sized; the per-step cost is one top-k over num_beams x vocab.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from ixcdoc.generate import apply_repetition_penalty

NEG = -1.0e9  # HF's "impossible" score


@dataclass
class BeamStep:
    """What the engine does next: feed ``tokens`` to beams rebuilt from ``sources``."""

    done: bool
    sources: list[int]  # new beam j continues old beam sources[j] (its KV rows are copied)
    tokens: list[int]  # the token each new beam feeds next


class BeamSearch:
    """The beam state of one request; ``step`` consumes the logits of its beams."""

    def __init__(
        self,
        num_beams: int,
        stop_ids: Collection[int],
        max_new_tokens: int,
        *,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> None:
        self.num_beams = num_beams
        self.stop_ids = torch.tensor(sorted({int(s) for s in stop_ids}), dtype=torch.long)
        self.stop_set = {int(s) for s in stop_ids}
        self.max_new_tokens = max_new_tokens
        self.length_penalty = length_penalty
        self.repetition_penalty = repetition_penalty
        self.keep = max(2, 1 + len(self.stop_set)) * num_beams
        self.running: list[list[int]] = [[] for _ in range(num_beams)]
        self.running_scores = torch.full((num_beams,), NEG, dtype=torch.float32)
        self.running_scores[0] = 0.0  # all beams start identical: expand from beam 0 only
        self.finished: list[list[int]] = [[] for _ in range(num_beams)]
        self.finished_scores = torch.full((num_beams,), NEG, dtype=torch.float32)
        self.is_finished = torch.zeros(num_beams, dtype=torch.bool)
        self.improvable = True  # HF's is_early_stop_heuristic_unsatisfied
        self.generated = 0  # tokens generated so far (HF: cur_len - prompt_len)

    def step(self, logits: torch.Tensor) -> BeamStep:
        """logits [num_beams, V] (fp32) of the running beams -> the next step."""
        nb = self.num_beams
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()  # [nb, V]
        if self.repetition_penalty != 1.0:
            for b in range(nb):
                hist = torch.tensor(self.running[b], dtype=torch.long)
                log_probs[b] = apply_repetition_penalty(log_probs[b], hist, self.repetition_penalty)
        vocab = log_probs.shape[-1]
        acc = (log_probs + self.running_scores[:, None]).reshape(-1)
        top_lp, top_idx = torch.topk(acc, k=self.keep)
        beam_of, tok_of = top_idx // vocab, top_idx % vocab
        candidates = [self.running[int(b)] + [int(t)] for b, t in zip(beam_of, tok_of, strict=True)]
        at_limit = self.generated + 1 >= self.max_new_tokens
        hits = torch.isin(tok_of, self.stop_ids) | at_limit

        # running beams for the next step: the best continuations that did not stop
        run_lp = top_lp + hits.float() * NEG
        sel = torch.topk(run_lp, k=nb).indices
        self.running = [candidates[int(i)] for i in sel]
        self.running_scores = run_lp[sel]
        sources = [int(beam_of[int(i)]) for i in sel]
        tokens = [int(tok_of[int(i)]) for i in sel]

        # finished hypotheses: stopping continuations among the top num_beams
        norm = top_lp / float(self.generated + 1) ** self.length_penalty
        if not self.improvable:
            norm = norm + NEG
        top_rank = torch.arange(self.keep) < nb
        norm = norm + (~(hits & top_rank)).float() * NEG
        merged_scores = torch.cat([self.finished_scores, norm])
        merged_seqs = self.finished + candidates
        merged_done = torch.cat([self.is_finished, hits & top_rank])
        best = torch.topk(merged_scores, k=nb).indices
        self.finished = [merged_seqs[int(i)] for i in best]
        self.finished_scores = merged_scores[best]
        self.is_finished = merged_done[best]

        self.generated += 1
        best_possible = self.running_scores[0] / float(self.generated) ** self.length_penalty
        worst = torch.where(
            self.is_finished, self.finished_scores.min(), torch.tensor(NEG, dtype=torch.float32)
        )
        self.improvable = self.improvable and bool((best_possible > worst).any())
        done = not self.improvable or bool(hits.all())
        return BeamStep(done, sources, tokens)

    def best(self) -> tuple[list[int], int | None]:
        """The best finished hypothesis without its stop token, and that token (or None)."""
        seq = list(self.finished[0])
        if seq and seq[-1] in self.stop_set:
            return seq[:-1], seq[-1]
        return seq, None
