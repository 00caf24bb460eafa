"""The engine loop: admit pages between decode steps, decode every running sequence at once.

    eng = dm.engine(n_slots=16, max_len=4096)
    h = eng.submit(ChatRequest([page], "Transcribe."), on_token=print)
    eng.run_until_idle()          # or eng.start() for a background thread
    h.result().text

``step()`` does one round: queue submissions, admit what fits (vision for the admitted pages in
one batch; each prompt's system-prompt prefix copied from the engine's saved KV when it has it;
the prompts packed into as few prefill forwards as ``prefill_tokens`` allows, each into its
slot, and their first tokens), then one decode forward for every running row. A sequence
leaves the batch the moment it stops; its rows go back to the slot table before the next
admission. ``submit`` may be called from any thread; ``step`` runs on
one thread (the caller's, or the one ``start`` creates).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ixcdoc.engine.beam import BeamSearch
from ixcdoc.engine.request import ChatRequest
from ixcdoc.engine.runner import ModelRunner
from ixcdoc.engine.scheduler import Scheduler
from ixcdoc.engine.sequence import Handle, OnDone, Sequence
from ixcdoc.engine.slots import SlotTable
from ixcdoc.errors import DeviceError, UsageError
from ixcdoc.generate import (
    CALLBACK,
    HOOK,
    MAX_LENGTH,
    MAX_NEW_TOKENS,
    STOP_TOKEN,
    OnToken,
    SamplingConfig,
    ShouldStop,
    choose_token,
)
from ixcdoc.prompt import ImagePart, TextPart, build_chat_prompt, split_prompt
from ixcdoc.tiling import check_hd, hd_geometry, image_token_count
from ixcdoc.vram import VISION_BATCH_TILES  # one HD55 page: 55 crops + the global view

if TYPE_CHECKING:
    from ixcdoc.runtime import DocModel

FaultHook = Callable[[ChatRequest], None]
PREFIX_CACHE_ENTRIES = 8  # distinct system prompts kept (and one slot's positions in all)
LogitsHook = Callable[[Handle, torch.Tensor], None]


def _parts(dm: DocModel, req: ChatRequest) -> list[TextPart | ImagePart]:
    prompt = build_chat_prompt(
        req.query, meta_instruction=req.meta_instruction, n_images=len(req.images)
    )
    return split_prompt(prompt, dm.tokenizer, len(req.images))


def _grid(dm: DocModel, image: Any, hd: int) -> tuple[int, int]:
    w, h = image.size  # PIL (W, H)
    g = hd_geometry(h, w, hd, dm.tile)
    return g.rows, g.cols


def prompt_tokens(dm: DocModel, req: ChatRequest) -> int:
    """Spliced prompt length of ``req`` from the tokenizer and tiling alone (no vision run)."""
    check_hd(req.hd)
    n = 0
    for part in _parts(dm, req):
        if isinstance(part, TextPart):
            n += len(part.ids)
        else:
            rows, cols = _grid(dm, req.images[part.index], req.hd)
            n += image_token_count(rows, cols, dm.tile, dm.config.vision.patch_size)
    return min(n, dm.config.max_length)


def request_positions(dm: DocModel, req: ChatRequest) -> int:
    """Cache positions ``req`` fills: prompt + max_new_tokens, cut at the position limit."""
    prompt = prompt_tokens(dm, req)
    return prompt + min(req.max_new_tokens, max(dm.config.max_position_embeddings - prompt, 0))


def vision_tiles(dm: DocModel, req: ChatRequest) -> int:
    """ViT tiles of ``req``: one global view plus rows x cols crops per image."""
    return sum(1 + r * c for r, c in (_grid(dm, im, req.hd) for im in req.images))


def sampling_config(req: ChatRequest) -> SamplingConfig:
    """The request's decoding options (a UsageError for invalid values, as chat raises)."""
    try:
        return SamplingConfig(
            max_new_tokens=req.max_new_tokens,
            do_sample=req.do_sample,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _oom(req: ChatRequest) -> DeviceError:
    return DeviceError(
        f"out of GPU memory at HD{req.hd}; try a lower tier or quant='4bit'", code="oom"
    )


class Engine:
    """Continuous batching over a slot KV cache (see docs/architecture.md, Batched engine)."""

    def __init__(
        self,
        dm: DocModel,
        *,
        n_slots: int,
        max_len: int,
        capture: bool | None = None,
        vision_batch_tiles: int = VISION_BATCH_TILES,
        prefill_tokens: int | None = None,
        prefix_cache: bool = True,
        fault_hook: FaultHook | None = None,
        logits_hook: LogitsHook | None = None,
    ) -> None:
        """``n_slots`` sequences (beams count one each) of up to ``max_len`` positions.

        ``capture``: compile the decode step per batch bucket (None: on CUDA only).
        ``prefill_tokens``: the most prompt tokens packed into one prefill forward (None: one
        slot's length, ``max_len``; a longer prompt still runs, alone); 1 prefills one by one.
        ``prefix_cache``: keep the KV of the prompts' leading text (the system prompt, the same
        for every page of a job) and copy it into each new slot instead of prefilling it again.
        ``fault_hook(request)`` runs just before each prefill (tests inject errors there);
        ``logits_hook(handle, logits [V])`` sees every fp32 logits row a sequence gets.
        """
        self.dm = dm
        max_len = min(max_len, dm.config.max_position_embeddings)
        self.runner = ModelRunner(dm.model, n_slots, max_len, capture=capture)
        self.slots = SlotTable(n_slots)
        self.scheduler = Scheduler(vision_batch_tiles)
        self.prefill_tokens = self.max_len if prefill_tokens is None else prefill_tokens
        self.prefix_cache = prefix_cache
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # LRU, ids -> KV
        self.prefix_hits = 0  # prompts that reused a saved prefix
        self.running: list[Sequence] = []
        self.stop_ids = frozenset(int(s) for s in dm.tokenizer.stop_ids)
        self.fault_hook = fault_hook
        self.logits_hook = logits_hook
        self._incoming: list[tuple[Sequence, int]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steps = 0  # decode forwards run

    def __repr__(self) -> str:
        state = "started" if self._thread is not None else "not started"
        return f"Engine({self.n_slots} slots x {self.max_len} positions, {state})"

    @property
    def n_slots(self) -> int:
        return self.runner.n_slots

    @property
    def max_len(self) -> int:
        return self.runner.max_len

    # -- submission (any thread) ---------------------------------------------------------------

    def submit(
        self,
        request: ChatRequest,
        *,
        on_token: OnToken | None = None,
        should_stop: ShouldStop | None = None,
        on_done: OnDone | None = None,
    ) -> Handle:
        """Queue a request; returns at once. Thread-safe.

        ``on_token(id)`` and ``should_stop(ids)`` behave as in ``chat`` (for beam search,
        ``on_token`` sees the final answer's tokens when it is chosen and ``should_stop`` is
        not consulted); ``on_done(handle)`` runs once the answer or the error is set. Both run
        on the engine's thread. Invalid options raise UsageError here.
        """
        cfg = sampling_config(request)
        if request.num_beams > self.n_slots:
            raise UsageError(
                f"num_beams={request.num_beams} needs {request.num_beams} cache slots; "
                f"this engine has {self.n_slots}"
            )
        need = request_positions(self.dm, request)
        if need > self.max_len:
            raise UsageError(
                f"the request needs {need} positions (prompt + max_new_tokens); "
                f"this engine's slots hold {self.max_len}"
            )
        handle = Handle(request)
        gen = None
        if request.seed is not None:
            gen = torch.Generator(device=self.dm.device).manual_seed(request.seed)
        seq = Sequence(handle, cfg, on_token, should_stop, on_done, gen)
        tiles = vision_tiles(self.dm, request)
        with self._cond:
            self._incoming.append((seq, tiles))
            self._cond.notify_all()
        return handle

    # -- the loop (one thread) -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing running."""
        with self._cond:
            return not self._incoming and not self.scheduler and not self.running

    @torch.inference_mode()
    def step(self) -> bool:
        """Admit what fits, then one decode step for every running sequence; False if idle."""
        with self._cond:
            incoming, self._incoming = self._incoming, []
        for seq, tiles in incoming:
            self.scheduler.add(seq, tiles)
        admitted = self.scheduler.admit(self.slots.free)
        if admitted:
            try:
                self._admit(admitted)
            except Exception as e:
                # Unexpected (per-request errors are handled inside): the pages being admitted
                # fail with it rather than vanish, so no caller waits forever on its handle.
                for seq in admitted:
                    if not seq.handle.done:
                        self._leave(seq)
                        self._fail(seq, _oom(seq.request) if _is_oom(e) else e)
                self.dm.release_memory()
                raise
        if self.running:
            try:
                self._decode()
            except Exception as e:  # an error in a decode step (or OOM with one row left)
                for seq in list(self.running):
                    self._leave(seq)
                    self._fail(seq, _oom(seq.request) if _is_oom(e) else e)
                self.dm.release_memory()
                raise
        return bool(admitted or self.running or self.scheduler)

    def run_until_idle(self) -> None:
        """Step until every submitted request has finished."""
        while not self.idle:
            self.step()

    def run_forever(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set: step while there is work, else wait for a submission.

        A step that raises has already failed the requests it was running (their handles
        carry the error); the loop goes on with the next ones.
        """
        while not stop.is_set():
            if self.idle:
                with self._cond:
                    self._cond.wait_for(lambda: self._incoming or stop.is_set(), timeout=0.5)
                continue
            with contextlib.suppress(Exception):
                self.step()

    @property
    def started(self) -> bool:
        """Whether the background thread ``start`` creates is running."""
        return self._thread is not None

    def start(self) -> None:
        """Run the loop on a background daemon thread (for a server); ``close`` stops it.

        The engine owns the model's KV cache until its thread ends: ``chat`` on the same model
        meanwhile is a UsageError naming this engine (it would overwrite the cache). Starting
        waits for a ``chat`` in progress, and is a UsageError while another engine runs.
        """
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self.dm.claim_cache(self)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="ixcdoc-engine", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.run_forever(self._stop)
        finally:
            self.dm.release_cache(self)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop the background thread (after its current step); False if it is still running
        after ``timeout`` seconds (its step goes on; do not free the model's cache under it)."""
        if self._thread is None:
            return True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        self._thread = None
        return stopped

    # -- admission -----------------------------------------------------------------------------

    def _admit(self, seqs: list[Sequence]) -> None:
        """Vision for ``seqs`` in one batch, then their prompts in packed prefills."""
        dm = self.dm
        t0 = time.perf_counter()
        parts: dict[int, list[TextPart | ImagePart]] = {}
        pixels: list[torch.Tensor] = []
        owners: list[Sequence] = []
        for seq in seqs:
            req = seq.request
            try:
                seq_parts = _parts(dm, req)
                seq_px = [
                    dm.pixels(req.images[p.index], req.hd)
                    for p in seq_parts
                    if isinstance(p, ImagePart)
                ]
            except Exception as e:  # a bad request (or image) fails alone
                self._fail(seq, e)
                continue
            parts[id(seq)] = seq_parts
            pixels += seq_px
            owners += [seq] * len(seq_px)
        live = [s for s in seqs if not s.handle.done]
        embeds: dict[int, list[torch.Tensor]] = {id(s): [] for s in live}
        try:
            # every admitted page's crops through the vision tower as one batch
            for seq, emb in zip(owners, self.runner.encode_images(pixels), strict=True):
                embeds[id(seq)].append(emb)
        except torch.cuda.OutOfMemoryError:
            dm.release_memory()
            embeds = {id(s): [] for s in live}
            for seq in live:  # one page at a time; a page that still fails fails alone
                px = [p for p, o in zip(pixels, owners, strict=True) if o is seq]
                try:
                    embeds[id(seq)] = self.runner.encode_images(px) if px else []
                except torch.cuda.OutOfMemoryError:
                    dm.release_memory()
                    self._fail(seq, _oom(seq.request))
        vision_ms = (time.perf_counter() - t0) * 1000 / max(len(live), 1)
        ready: list[_Prompt] = []
        for seq in live:
            if seq.handle.done:
                continue
            seq.timings["vision_ms"] = vision_ms
            prompt = self._prepare(seq, parts[id(seq)], embeds[id(seq)])
            if prompt is not None:
                ready.append(prompt)
        # a system prompt that several of these pages start with and the engine has not kept
        # yet: the first page prefills it whole and saves it, the others then reuse it
        leaders: list[_Prompt] = []
        followers: list[_Prompt] = []
        led: set[tuple[int, ...]] = set()  # the prefixes a leader of this round will save
        for p in ready:
            if p.save is not None and p.save in led:
                followers.append(p)
                continue
            leaders.append(p)
            if p.save is not None and self._keepable(p.save):
                led.add(p.save)
        for pack in _packs(leaders, self.prefill_tokens):
            self._prefill(pack)
        followers = [self._reuse_prefix(p) for p in followers if not p.seq.handle.done]
        for pack in _packs(followers, self.prefill_tokens):
            self._prefill(pack)

    def _prepare(
        self, seq: Sequence, parts: list[TextPart | ImagePart], images: list[torch.Tensor]
    ) -> _Prompt | None:
        """Splice the prompt, set the budget, take the cache rows; None if it ended here."""
        dm, req, cfg = self.dm, seq.request, seq.config
        tensors: list[torch.Tensor] = []
        it = iter(images)
        for part in parts:
            if isinstance(part, TextPart):
                tensors.append(torch.tensor(part.ids, dtype=torch.long))
            else:
                emb = next(it)
                seq.grids.append(_grid(dm, req.images[part.index], req.hd))
                seq.n_image_tokens += emb.shape[0]
                tensors.append(emb)
        embeds, im_mask = dm.model.splice(tensors)
        seq.prompt_len = embeds.shape[1]
        seq.truncated = sum(t.shape[0] for t in tensors) > seq.prompt_len
        max_pos = dm.config.max_position_embeddings
        seq.budget = min(cfg.max_new_tokens, max(max_pos - seq.prompt_len, 0))
        if seq.budget == 0:  # as generate: no forward at all
            seq.stop_reason = MAX_NEW_TOKENS if cfg.max_new_tokens == 0 else MAX_LENGTH
            self._complete(seq)
            return None
        if seq.prompt_len + seq.budget > self.max_len:  # submit's estimate is exact; a guard
            self._fail(
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
                self._fail_prefill(seq, e)
                return None
        seq.rows = self.slots.allocate(seq, seq.n_rows)
        self.running.append(seq)
        key = _prefix_key(parts, seq.prompt_len) if self.prefix_cache else None
        return self._reuse_prefix(_Prompt(seq, embeds, im_mask, save=key))

    def _reuse_prefix(self, p: _Prompt) -> _Prompt:
        """``p`` with its saved system prompt copied into its row and cut from what it still
        has to prefill, if the engine keeps that prefix; else ``p`` as it is."""
        key = p.save
        if key is None or (saved := self._prefixes.get(key)) is None:
            return p
        self._prefixes.move_to_end(key)
        self.runner.load_prefix(p.seq.rows[0], saved)
        self.prefix_hits += 1
        n = len(key)
        im_mask = None if p.im_mask is None else p.im_mask[:, n:]
        return _Prompt(p.seq, p.embeds[:, n:], im_mask, first=n)

    def _prefill(self, pack: list[_Prompt]) -> None:
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
                self._fail_prefill(pack[0].seq, e)
                return
            if _is_oom(e):
                self.dm.release_memory()
            for p in pack:  # a smaller forward may fit; a bad prompt fails alone
                self._prefill([p])
            return
        for p in pack:  # before any first token: a sequence that stops at once moves rows
            if p.save is not None and p.save not in self._prefixes:
                self._save_prefix(p.save, p.seq.rows[0])
        for p, row in zip(pack, logits, strict=True):
            self._first_token(p.seq, row, t0)

    def _save_prefix(self, key: tuple[int, ...], row: int) -> None:
        """Keep the KV of ``key``'s positions from ``row``, within the cache's bounds: at most
        PREFIX_CACHE_ENTRIES prefixes and one slot's positions in all (a client's giant
        system prompts must not pin GPU memory); least recently used dropped first."""
        if not self._keepable(key):
            return
        self._prefixes[key] = self.runner.save_prefix(row, len(key))
        while (
            len(self._prefixes) > PREFIX_CACHE_ENTRIES
            or sum(len(k) for k in self._prefixes) > self.max_len
        ):
            self._prefixes.popitem(last=False)

    def _keepable(self, key: tuple[int, ...]) -> bool:
        """A prefix the engine may keep: one over half a slot would crowd out every other
        prefix, and prefilling it is the lesser cost."""
        return len(key) <= self.max_len // 2

    def _fail_prefill(self, seq: Sequence, e: BaseException) -> None:
        self._leave(seq)
        if _is_oom(e):
            self.dm.release_memory()
        self._fail(seq, _oom(seq.request) if _is_oom(e) else e)

    def _first_token(self, seq: Sequence, logits: torch.Tensor, t0: float) -> None:
        """The prefill's logits [V] of ``seq``: its first token, or the first beam step."""
        req, cfg = seq.request, seq.config
        if self.logits_hook is not None:
            self.logits_hook(seq.handle, logits)
        if req.num_beams > 1:
            seq.beam = BeamSearch(
                req.num_beams,
                self.stop_ids,
                seq.budget,
                repetition_penalty=cfg.repetition_penalty,
            )
            self._beam_step(seq, logits[None].expand(req.num_beams, -1))
        else:
            if cfg.repetition_penalty != 1.0:
                seq.generated = torch.empty(seq.budget, dtype=torch.long, device=self.dm.device)
            tok = int(choose_token(logits, self._history(seq), cfg, seq.generator))
            self._accept(seq, tok)
        _sync(self.dm.device)
        seq.t_prefilled = time.perf_counter()
        seq.timings["prefill_ms"] = (seq.t_prefilled - t0) * 1000
        if seq.stop_reason is not None:
            self._leave(seq)
            self._complete(seq)

    # -- decoding ------------------------------------------------------------------------------

    def _decode(self) -> None:
        """One decode forward for every running row (``running`` holds rows 0..used-1)."""
        running = list(self.running)
        ids, pos = _feed(running, self.slots.used)
        while True:
            try:
                logits = self.runner.decode(ids, pos)  # [used, V]
                break
            except torch.cuda.OutOfMemoryError:
                if len(running) == 1:
                    raise  # step() fails it: nothing else to make room for
                # make room: the newest sequence (the least work lost) fails with 'oom',
                # which callers retry one tier lower; the others decode on
                self.dm.release_memory()
                victim = running.pop()
                self._leave(victim)
                self._fail(victim, _oom(victim.request))
                ids, pos = _feed(running, self.slots.used)
        self.steps += 1
        self._decoded(running, logits)

    def _decoded(self, running: list[Sequence], logits: torch.Tensor) -> None:
        """Choose every decode row's token from its logits [used, V]; finished ones leave."""
        plain = [s for s in running if s.beam is None]
        special = [s for s in plain if s.config.do_sample or s.generated is not None]
        # greedy rows: one argmax over the batch; sampled or penalised rows overwrite theirs
        chosen = logits.argmax(-1)  # [used]
        for seq in special:
            r = seq.rows[0]
            chosen[r] = choose_token(logits[r], self._history(seq), seq.config, seq.generator)
        if self.logits_hook is not None:
            for seq in plain:
                self.logits_hook(seq.handle, logits[seq.rows[0]])
        tokens = chosen.tolist() if plain else []  # the one device-to-host read per step
        finished: list[Sequence] = []
        for seq in running:
            if seq.beam is not None:
                if self.logits_hook is not None:
                    for r in seq.rows:
                        self.logits_hook(seq.handle, logits[r])
                self._beam_step(seq, logits[seq.rows])
            else:
                self._accept(seq, tokens[seq.rows[0]])
            if seq.stop_reason is not None:
                finished.append(seq)
        for seq in finished:
            self._leave(seq)
            self._complete(seq)

    def _history(self, seq: Sequence) -> torch.Tensor | None:
        return None if seq.generated is None else seq.generated[: len(seq.tokens)]

    def _accept(self, seq: Sequence, tok: int) -> None:
        """The stop rules of ``generate``, in its order, for one new token."""
        i = len(seq.tokens)
        try:
            if tok in self.stop_ids:
                seq.stop_reason, seq.stop_token_id = STOP_TOKEN, tok
                return
            seq.tokens.append(tok)
            if seq.generated is not None:
                seq.generated[i] = tok
            if seq.on_token is not None and seq.on_token(tok) is False:
                seq.stop_reason = CALLBACK
                return
            if seq.should_stop is not None and (why := seq.should_stop(seq.tokens)):
                seq.stop_reason, seq.detail = HOOK, why
                return
        except Exception as e:  # a failing callback fails its request, not the engine
            seq.stop_reason = CALLBACK
            seq.handle.error = e
            return
        if i == seq.budget - 1:
            full = seq.budget == seq.config.max_new_tokens
            seq.stop_reason = MAX_NEW_TOKENS if full else MAX_LENGTH
            return
        seq.feed = [tok]

    def _beam_step(self, seq: Sequence, logits: torch.Tensor) -> None:
        beam = seq.beam
        assert beam is not None
        out = beam.step(logits)
        if out.done:
            tokens, stop = beam.best()
            seq.tokens = tokens
            seq.stop_token_id = stop
            seq.stop_reason = STOP_TOKEN if stop is not None else MAX_NEW_TOKENS
            if stop is None and seq.budget < seq.config.max_new_tokens:
                seq.stop_reason = MAX_LENGTH
            if seq.on_token is not None:
                for t in tokens:
                    if seq.on_token(t) is False:
                        break
            return
        # new beam j continues old beam sources[j]: copy its cached positions. The first step
        # fans the prompt out of the prefilled row; after that every row holds the same
        # prompt, so a reorder copies only the generated positions.
        filled = seq.prompt_len + beam.generated - 1
        start = 0 if beam.generated == 1 else seq.prompt_len
        src = [seq.rows[s] for s in out.sources]
        moved = [(s, d) for s, d in zip(src, seq.rows, strict=True) if s != d]
        if moved:
            self.runner.copy_rows([s for s, _ in moved], [d for _, d in moved], filled, start)
        seq.feed = out.tokens

    # -- leaving -------------------------------------------------------------------------------

    def _leave(self, seq: Sequence) -> None:
        """Take ``seq`` out of the batch and give its rows back (refilling the holes)."""
        if seq in self.running:
            self.running.remove(seq)
        if not seq.rows:
            return
        moves = self.slots.release(seq)
        seq.rows = []
        by_row = {r: s for s in self.running for r in s.rows}
        for src, dst in moves:
            owner = by_row.pop(src)
            filled = owner.prompt_len + (
                owner.beam.generated if owner.beam is not None else len(owner.tokens)
            )
            self.runner.copy_rows([src], [dst], min(filled, self.max_len))
            owner.rows[owner.rows.index(src)] = dst
            by_row[dst] = owner

    def _complete(self, seq: Sequence) -> None:
        from ixcdoc.answer import Answer

        now = time.perf_counter()
        decode_ms = (now - seq.t_prefilled) * 1000 if seq.t_prefilled else 0.0
        steps = max(len(seq.tokens) - 1, 0) if seq.beam is None else seq.beam.generated - 1
        req = seq.request
        timings: dict[str, Any] = {
            "vision_ms": seq.timings.get("vision_ms", 0.0),
            "prefill_ms": seq.timings.get("prefill_ms", 0.0),
            "decode_ms": decode_ms,
            "n_tokens": len(seq.tokens),
            "decode_tokens_per_s": steps / (decode_ms / 1000) if decode_ms > 0 else 0.0,
        }
        answer = Answer(
            text=self.dm.tokenizer.decode(seq.tokens, skip_special=True),
            token_ids=list(seq.tokens),
            stop_reason=seq.stop_reason or MAX_NEW_TOKENS,
            hd=req.hd,
            grids=seq.grids,
            n_image_tokens=seq.n_image_tokens,
            prompt_tokens=seq.prompt_len,
            truncated=seq.truncated,
            timings=timings,
            stop_detail=seq.detail,
        )
        error = seq.handle.error
        seq.handle._finish(None if error else answer, error)
        self._done_callback(seq)

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        seq.handle._finish(None, error)
        self._done_callback(seq)

    def _done_callback(self, seq: Sequence) -> None:
        if seq.on_done is not None:
            with contextlib.suppress(Exception):  # a caller's bug must not stop the others
                seq.on_done(seq.handle)


def _feed(running: list[Sequence], used: int) -> tuple[list[int], list[int]]:
    """Next input token and position of every decode row 0..used-1."""
    ids = [0] * used
    pos = [0] * used
    for seq in running:
        p = seq.next_position
        for j, r in enumerate(seq.rows):
            ids[r], pos[r] = seq.feed[j], p
    return ids, pos


@dataclass
class _Prompt:
    """A sequence ready for prefill: its spliced prompt, rows already allocated."""

    seq: Sequence
    embeds: torch.Tensor  # [1, L, D]: what is left to prefill
    im_mask: torch.Tensor | None  # [1, L]
    first: int = 0  # position of embeds[0]: > 0 when a saved prefix was loaded into the row
    save: tuple[int, ...] | None = None  # save this prefix from the row once prefilled


def _prefix_key(parts: list[TextPart | ImagePart], prompt_len: int) -> tuple[int, ...] | None:
    """The prompt's reusable prefix: its leading text (the system prompt and the user turn's
    opening) when an image follows it, as token ids; None if there is none."""
    if len(parts) < 2 or not isinstance(parts[0], TextPart):
        return None
    ids = tuple(parts[0].ids)
    return ids if 0 < len(ids) < prompt_len else None


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


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
