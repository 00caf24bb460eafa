"""The engine loop: admit pages between decode steps, decode every running sequence at once.

    eng = dm.engine(n_slots=16, max_len=4096)
    h = eng.submit(ChatRequest([page], "Transcribe."), on_token=print)
    eng.run_until_idle()          # or eng.start() for a background thread
    h.result().text

``step()`` does one round: queue submissions, admit what fits (``scheduler.py`` decides which,
``admission.py`` runs their vision, prefix reuse and packed prefills), then one decode forward
for every running row (``decode.py``). A sequence leaves the batch the moment it stops
(``finish.py`` sets its answer); its rows go back to the slot table before the next admission.
``submit`` may be called from any thread; ``step`` runs on one thread (the caller's, or the one
``start`` creates). This file is the loop, the threads and the batch's rows.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from ixcdoc.engine import finish
from ixcdoc.engine.admission import Admission
from ixcdoc.engine.arith import request_positions, sampling_config, vision_tiles
from ixcdoc.engine.decode import Decoding
from ixcdoc.engine.finish import is_oom, oom_error
from ixcdoc.engine.prefix import PrefixCache
from ixcdoc.engine.prompts import Loaded
from ixcdoc.engine.request import ChatRequest
from ixcdoc.engine.runner import CacheReads, ModelRunner
from ixcdoc.engine.scheduler import Scheduler
from ixcdoc.engine.sequence import Handle, OnDone, Sequence
from ixcdoc.engine.slots import SlotTable
from ixcdoc.engine.speculate import StepCost
from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.generate import OnToken, ShouldStop, seeded_generator
from ixcdoc.tasks import DRAFT_TOKENS
from ixcdoc.tokenizer import check_text
from ixcdoc.vram import VISION_BATCH_TILES  # one HD55 page: 55 crops + the global view

FaultHook = Callable[[ChatRequest], None]
LogitsHook = Callable[[Handle, torch.Tensor], None]


class Engine(Admission, Decoding):
    """Continuous batching over a slot KV cache (see docs/architecture.md, Batched engine)."""

    def __init__(
        self,
        loaded: Loaded,
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
        """An engine on ``loaded``'s network: ``n_slots`` sequences (beams count one each) of
        up to ``max_len`` positions. ``DocModel.engine`` builds one on the loaded model.

        ``capture``: compile the decode step per batch bucket (None: on CUDA only).
        ``prefill_tokens``: the most prompt tokens packed into one prefill forward (None: one
        slot's length, ``max_len``; a longer prompt still runs, alone); 1 prefills one by one.
        ``prefix_cache``: keep the KV of the prompts' leading text (the system prompt, the same
        for every page of a job) and copy it into each new slot instead of prefilling it again.
        ``fault_hook(request)`` runs just before each prefill (tests inject errors there);
        ``logits_hook(handle, logits [V])`` sees every fp32 logits row a sequence gets.
        """
        self.loaded = loaded
        max_len = min(max_len, loaded.config.max_position_embeddings)
        self.runner = ModelRunner(loaded.net, n_slots, max_len, capture=capture)
        self.slots = SlotTable(n_slots)
        self.scheduler = Scheduler(vision_batch_tiles)
        self.prefill_tokens = self.max_len if prefill_tokens is None else prefill_tokens
        self.prefix_cache = prefix_cache
        self.prefixes = PrefixCache(self.runner)
        self.running: list[Sequence] = []
        self.stop_ids = frozenset(int(s) for s in loaded.tokenizer.stop_ids)
        self.fault_hook = fault_hook
        self.logits_hook = logits_hook
        self._incoming: list[tuple[Sequence, int]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.steps = 0  # decode forwards run
        self.costs = StepCost(cuda=self.runner.device.type == "cuda")  # speculation's k
        self._t_read = 0.0  # when the last step's tokens reached the host
        # After a decode step ran out of memory: decode only rows 0..row_cap-1 (a power of
        # two, a captured step's own bucket) until the batch empties; sequences above it wait.
        self.row_cap: int | None = None

    def __repr__(self) -> str:
        state = "started" if self._thread is not None else "not started"
        return f"Engine({self.n_slots} slots x {self.max_len} positions, {state})"

    @property
    def n_slots(self) -> int:
        return self.runner.n_slots

    @property
    def max_len(self) -> int:
        return self.runner.max_len

    @property
    def cache_reads(self) -> CacheReads:
        """What this engine's decode steps read of the cache, against the live cache."""
        return self.runner.reads

    @property
    def prefix_hits(self) -> int:
        """Prompts that reused a saved system prompt (``PrefixCache``)."""
        return self.prefixes.hits

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
        need = request_positions(self.loaded, request)
        if need > self.max_len:
            raise UsageError(
                f"the request needs {need} positions (prompt + max_new_tokens); "
                f"this engine's slots hold {self.max_len}"
            )
        draft = self._draft_ids(request)
        handle = Handle(request)
        gen = seeded_generator(request.seed, self.runner.device)
        seq = Sequence(handle, cfg, on_token, should_stop, on_done, gen)
        seq.draft_ids = draft
        tiles = vision_tiles(self.loaded, request)
        with self._cond:
            if self._closed:  # under the lock: close() fails all that is queued, never this
                raise UsageError("this engine is closed; make a new one", code="engine_closed")
            self._incoming.append((seq, tiles))
            self._cond.notify_all()
        return handle

    def _draft_ids(self, request: ChatRequest) -> list[int]:
        """The request's draft as token ids: text tokenized with the model's tokenizer (no
        BOS), ids checked against the vocabulary (a UsageError names the bad one); its first
        ``tasks.DRAFT_TOKENS`` only (what the engine indexes per sequence stays bounded)."""
        draft = request.draft
        if not draft:
            return []
        if isinstance(draft, str):
            check_text(draft, "the draft")  # the error names the draft, not the query
            return self.loaded.tokenizer.encode(draft, bos=False)[:DRAFT_TOKENS]
        vocab = self.loaded.config.vocab_size
        bad = next((t for t in draft if not 0 <= t < vocab), None)
        if bad is not None:
            raise UsageError(f"draft token id {bad} is outside the vocabulary (0..{vocab - 1})")
        return list(draft[:DRAFT_TOKENS])

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
        free = self.slots.free
        if self.row_cap is not None:  # rows above the cap would only wait
            free = max(0, min(free, self.row_cap - self.slots.used))
        admitted = self.scheduler.admit(free)
        if admitted:
            try:
                self._admit(admitted)
            except Exception as e:
                # Unexpected (per-request errors are handled inside): the pages being admitted
                # fail with it rather than vanish, so no caller waits forever on its handle.
                for seq in admitted:
                    if not seq.handle.done:
                        self._leave(seq)
                        finish.fail(seq, oom_error(seq.request) if is_oom(e) else e)
                self.runner.release_memory()
                raise
        if self.running:
            try:
                self._decode()
            except Exception as e:  # an error in a decode forward (not out of memory: handled)
                for seq in list(self.running):
                    self._leave(seq)
                    finish.fail(seq, oom_error(seq.request) if is_oom(e) else e)
                self.runner.release_memory()
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
        try:
            while not stop.is_set():
                if self.idle:
                    with self._cond:
                        self._cond.wait_for(lambda: self._incoming or stop.is_set(), timeout=0.5)
                    continue
                with contextlib.suppress(Exception):
                    self.step()
        finally:
            if self._closed:  # on this thread, after its last step: nothing is left waiting
                self._abandon()

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
        self.loaded.claim_cache(self)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="ixcdoc-engine", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.run_forever(self._stop)
        finally:
            self.loaded.release_cache(self)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop the background thread (after its current step); False if it is still running
        after ``timeout`` seconds (its step goes on; do not free the model's cache under it).

        Every request still queued or running then fails (``IxcdocError`` with code
        ``engine_closed``; its ``on_done`` runs), so no ``result()`` waits for ever; a later
        ``submit`` is a UsageError. Without a background thread, call it from the thread that
        steps the engine."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            self._abandon()
            return True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        self._thread = None
        return stopped

    def _abandon(self) -> None:
        """Fail every request still queued or running: the engine is closed."""
        with self._cond:
            incoming, self._incoming = self._incoming, []
        left = [seq for seq, _ in incoming] + self.scheduler.drain()
        for seq in list(self.running):
            self._leave(seq)
            left.append(seq)
        closed = IxcdocError(
            "the engine was closed before this request finished", code="engine_closed"
        )
        for seq in left:
            if not seq.handle.done:
                finish.fail(seq, closed)

    # -- the batch's rows ---------------------------------------------------------------------

    def _leave(self, seq: Sequence) -> None:
        """Take ``seq`` out of the batch and give its rows back (refilling the holes)."""
        if seq in self.running:
            self.running.remove(seq)
            if not self.running:
                self.row_cap = None  # the batch emptied: the next one may use every slot
                self.costs.batch_emptied()  # and every k may run again
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

    def _fail_alone(self, seq: Sequence, e: BaseException) -> None:
        """Take ``seq`` out of the batch and fail it with ``e`` (out of memory as 'oom')."""
        self._leave(seq)
        if is_oom(e):
            self.runner.release_memory()
        finish.fail(seq, oom_error(seq.request) if is_oom(e) else e)
