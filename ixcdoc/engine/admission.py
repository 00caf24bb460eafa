"""Admission: the pages the scheduler let in go from requests to running sequences.

For the sequences admitted in one step: their prompts' parts and pixels (a bad request or
image fails alone), every page's crops through the vision tower as one batch (after an out of
memory error: one page at a time), each prompt spliced, given its budget and its cache rows,
its saved system prompt copied in (``PrefixCache``), then the prompts packed into as few
prefill forwards as ``prefill_tokens`` allows, and each one's first token (or first beam step).
A system prompt that several of these pages start with and the cache does not hold yet is
prefilled whole by the first of them and saved; the others follow in a second round and reuse
it. Mixed into ``Engine``: it uses the engine's runner, slots, running list and hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ixcdoc.engine import finish
from ixcdoc.engine.beam import BeamSearch
from ixcdoc.engine.draft import Proposer
from ixcdoc.engine.finish import is_oom, oom_error
from ixcdoc.engine.prefix import Key, prefix_key
from ixcdoc.engine.prompts import Part, embed_parts, part_grids, part_pixels, prompt_parts
from ixcdoc.engine.speculate import SeqSpec
from ixcdoc.errors import UsageError
from ixcdoc.generate import MAX_LENGTH, MAX_NEW_TOKENS, choose_token

if TYPE_CHECKING:
    from ixcdoc.engine.engine import Engine
    from ixcdoc.engine.sequence import Sequence


@dataclass
class _Prompt:
    """A sequence ready for prefill: its spliced prompt, rows already allocated."""

    seq: Sequence
    embeds: torch.Tensor  # [1, L, D]: what is left to prefill
    im_mask: torch.Tensor | None  # [1, L]
    first: int = 0  # position of embeds[0]: > 0 when a saved prefix was loaded into the row
    save: Key | None = None  # save this prefix from the row once prefilled


def _packs(prompts: list[_Prompt], budget: int) -> list[list[_Prompt]]:
    """Consecutive prompts grouped so each group's tokens stay within ``budget``.

    A prompt longer than the budget goes alone (it fits a slot, so it is never too long to
    prefill).
    """
    packs: list[list[_Prompt]] = []
    used = budget + 1
    for p in prompts:
        n = p.embeds.shape[1]
        if used + n > budget:
            packs.append([])
            used = 0
        packs[-1].append(p)
        used += n
    return packs


class Admission:
    """``Engine``'s admission steps (see the module docstring)."""

    def _admit(self: Engine, seqs: list[Sequence]) -> None:
        """Vision for ``seqs`` in one batch, then their prompts in packed prefills."""
        loaded = self.loaded
        t0 = time.perf_counter()
        parts: dict[int, list[Part]] = {}
        pixels: list[torch.Tensor] = []
        owners: list[Sequence] = []
        for seq in seqs:
            req = seq.request
            try:
                seq_parts = prompt_parts(
                    loaded.tokenizer, req.query, req.meta_instruction, len(req.images)
                )
                seq_px = part_pixels(seq_parts, req.images, req.hd, loaded.pixels)
            except Exception as e:  # a bad request (or image) fails alone
                finish.fail(seq, e)
                continue
            parts[id(seq)] = seq_parts
            pixels += seq_px
            owners += [seq] * len(seq_px)
        live = [s for s in seqs if not s.handle.done]
        embeds = self._encode(live, pixels, owners)
        vision_ms = (time.perf_counter() - t0) * 1000 / max(len(live), 1)
        ready: list[_Prompt] = []
        for seq in live:
            if seq.handle.done:
                continue
            seq.timings["vision_ms"] = vision_ms
            prompt = self._seat(seq, parts[id(seq)], embeds[id(seq)])
            if prompt is not None:
                ready.append(prompt)
        # a system prompt that several of these pages start with and the engine has not kept
        # yet: the first page prefills it whole and saves it, the others then reuse it
        leaders: list[_Prompt] = []
        followers: list[_Prompt] = []
        led: set[Key] = set()  # the prefixes a leader of this round will save
        for p in ready:
            if p.save is not None and p.save in led:
                followers.append(p)
                continue
            leaders.append(p)
            if p.save is not None and self.prefixes.keepable(p.save):
                led.add(p.save)
        for pack in _packs(leaders, self.prefill_tokens):
            self._prefill(pack)
        followers = [self._reuse_prefix(p) for p in followers if not p.seq.handle.done]
        for pack in _packs(followers, self.prefill_tokens):
            self._prefill(pack)

    def _encode(
        self: Engine, live: list[Sequence], pixels: list[torch.Tensor], owners: list[Sequence]
    ) -> dict[int, list[torch.Tensor]]:
        """Image embeddings per live sequence: every page in one vision batch, or after an
        out of memory error one page at a time (a page that still fails fails alone)."""
        embeds: dict[int, list[torch.Tensor]] = {id(s): [] for s in live}
        try:
            for seq, emb in zip(owners, self.runner.encode_images(pixels), strict=True):
                embeds[id(seq)].append(emb)
        except torch.cuda.OutOfMemoryError:
            self.runner.release_memory()
            embeds = {id(s): [] for s in live}
            for seq in live:
                px = [p for p, o in zip(pixels, owners, strict=True) if o is seq]
                try:
                    embeds[id(seq)] = self.runner.encode_images(px) if px else []
                except torch.cuda.OutOfMemoryError:
                    self.runner.release_memory()
                    finish.fail(seq, oom_error(seq.request))
        return embeds

    def _seat(
        self: Engine, seq: Sequence, parts: list[Part], images: list[torch.Tensor]
    ) -> _Prompt | None:
        """Splice the prompt, set the budget, take the cache rows; None if it ended here."""
        req, cfg = seq.request, seq.config
        grids = part_grids(parts, req.images, req.hd, self.loaded.tile)
        spliced = embed_parts(self.runner.net, parts, images, grids)
        seq.grids, seq.n_image_tokens = spliced.grids, spliced.n_image_tokens
        seq.prompt_len, seq.truncated = spliced.prompt_tokens, spliced.truncated
        max_pos = self.loaded.config.max_position_embeddings
        seq.budget = min(cfg.max_new_tokens, max(max_pos - seq.prompt_len, 0))
        if seq.budget == 0:  # as generate: no forward at all
            seq.stop_reason = MAX_NEW_TOKENS if cfg.max_new_tokens == 0 else MAX_LENGTH
            finish.complete(seq, self.loaded.tokenizer)
            return None
        if seq.prompt_len + seq.budget > self.max_len:  # submit's estimate is exact; a guard
            finish.fail(
                seq,
                UsageError(
                    f"the request needs {seq.prompt_len + seq.budget} "
                    f"positions; this engine's slots hold {self.max_len}"
                ),
            )
            return None
        if self.fault_hook is not None:
            try:
                self.fault_hook(req)
            except Exception as e:
                self._fail_alone(seq, e)
                return None
        seq.rows = self.slots.allocate(seq, seq.n_rows)
        self.running.append(seq)
        key = prefix_key(parts, seq.prompt_len) if self.prefix_cache else None
        return self._reuse_prefix(_Prompt(seq, spliced.inputs_embeds, spliced.im_mask, save=key))

    def _reuse_prefix(self: Engine, p: _Prompt) -> _Prompt:
        """``p`` with its saved system prompt copied into its row and cut from what it still
        has to prefill, if the engine keeps that prefix; else ``p`` as it is."""
        n = self.prefixes.load(p.save, p.seq.rows[0])
        if n == 0:
            return p
        im_mask = None if p.im_mask is None else p.im_mask[:, n:]
        return _Prompt(p.seq, p.embeds[:, n:], im_mask, first=n)

    def _prefill(self: Engine, pack: list[_Prompt]) -> None:
        """One packed forward for ``pack``; if it fails, each prompt alone (failing alone)."""
        t0 = time.perf_counter()
        try:
            logits = self.runner.prefill_packed(
                [p.embeds for p in pack],
                [p.im_mask for p in pack],
                [p.seq.rows[0] for p in pack],
                [p.first for p in pack],
            )  # [n, V]
        except Exception as e:  # out of memory (or anything else)
            if len(pack) == 1:
                self._fail_alone(pack[0].seq, e)
                return
            if is_oom(e):
                self.runner.release_memory()
            for p in pack:  # a smaller forward may fit; a bad prompt fails alone
                self._prefill([p])
            return
        for p in pack:  # before any first token: a sequence that stops at once moves rows
            if p.save is not None and p.save not in self.prefixes:
                self.prefixes.save(p.save, p.seq.rows[0])
        for p, row in zip(pack, logits, strict=True):
            try:
                self._first_token(p.seq, row, t0)
            except Exception as e:  # its sampling failed (NaN probabilities, say): it alone
                self._fail_alone(p.seq, e)

    def _speculation(self: Engine, seq: Sequence) -> None:
        """A greedy unpenalised request that did not turn speculation off gets a proposer over
        its draft (tokenized at submit) and its own output."""
        req, cfg = seq.request, seq.config
        seq.draft_tokens = len(seq.draft_ids)
        if req.speculate == "off" or cfg.do_sample or cfg.repetition_penalty != 1.0:
            return
        seq.spec = SeqSpec(Proposer(seq.draft_ids))

    def _first_token(self: Engine, seq: Sequence, logits: torch.Tensor, t0: float) -> None:
        """The prefill's logits [V] of ``seq``: its first token, or the first beam step."""
        req, cfg = seq.request, seq.config
        if self.logits_hook is not None:
            self.logits_hook(seq.handle, logits)
        if req.num_beams > 1:
            seq.beam = BeamSearch(
                req.num_beams, self.stop_ids, seq.budget, repetition_penalty=cfg.repetition_penalty
            )
            finish.beam_step(seq, logits[None].expand(req.num_beams, -1), self.runner)
        else:
            if cfg.repetition_penalty != 1.0:
                seq.generated = torch.empty(seq.budget, dtype=torch.long, device=self.runner.device)
            self._speculation(seq)
            tok = int(choose_token(logits, seq.history, cfg, seq.generator))
            finish.accept(seq, tok, self.stop_ids)
        self.runner.sync()
        seq.t_prefilled = time.perf_counter()
        seq.timings["prefill_ms"] = (seq.t_prefilled - t0) * 1000
        if seq.stop_reason is not None:
            self._leave(seq)
            finish.complete(seq, self.loaded.tokenizer)
