"""Batched forwards on the slot cache: vision for many pages, prefill into a slot, decode rows.

The decoder's static KV cache is allocated as ``[n_slots, n_kv, max_len, head_dim]`` per layer.
The prompts admitted together are prefilled as one packed forward (their tokens back to back;
attention and cache writes per prompt, each into its slot row; a lone prompt runs exactly the
batch-1 prefill of ``generate``; a prompt may start after a saved prefix copied into its row);
a decode step runs every running row in one forward with per-row positions and masks
(``InternLM2ForCausalLM.forward`` with a 2-D ``input_pos``).

Decode capture: on CUDA the decode step is compiled with ``torch.compile(mode=
"reduce-overhead")`` (CUDA graphs) once per batch-size bucket (1, 2, 4, ... up to the slots),
the batch padded to its bucket with dummy rows that sit in free slots at position 0 (their
writes land in rows no sequence owns and their logits are dropped). Off on the CPU, where
graphs do not exist and inductor's compile time outweighs the gain for short runs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ixcdoc.errors import DeviceError, UsageError
from ixcdoc.model.internlm2 import AttentionBatch
from ixcdoc.vram import available_ram, kv_cache_bytes, prefill_activation_bytes, size_text

if TYPE_CHECKING:
    from ixcdoc.model.xcomposer import XComposer2

ATTEND_ROUND = 64  # eager decode attends to the longest row's prefix, rounded up to this


def _decode_rows(
    net: XComposer2, ids: torch.Tensor, pos: torch.Tensor, span: int | None, bmm: bool
) -> torch.Tensor:
    """ids [B, 1], per-row positions [B, 1] -> fp32 logits [B, V] over cache rows 0..B-1."""
    batch = AttentionBatch(span=span, bmm=bmm)
    return net(net.embed_tokens(ids), None, pos, last_only=True, batch=batch)[:, -1]


@functools.cache
def _compiled_decode_rows(mode: str | None) -> object:
    # One wrapper per process: dynamo keys its graphs on the batch shape (one per bucket).
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(_decode_rows, mode=mode, fullgraph=True, dynamic=False)


def _free_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get on ``device`` (None when unknown): on CUDA the
    driver's free memory plus what torch's caching allocator holds unused; on the CPU
    ``vram.available_ram`` (MemAvailable, within a container's limit; swap not counted)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_ram() if device.type == "cpu" else None


def masked_bmm(device: torch.device) -> bool:
    """Whether masked attention over the cache runs as baddbmm (``AttentionBatch.bmm``): off
    CUDA, where SDPA's masked CPU kernel costs ~2 ms per call on a few query rows; on CUDA,
    SDPA with a 4-D mask."""
    return device.type != "cuda"


def bucket_for(n: int, limit: int) -> int:
    """The smallest power of two >= n, at most ``limit`` (the slot count)."""
    b = 1
    while b < n:
        b *= 2
    return min(b, limit)


def release_memory(device: torch.device) -> None:
    """Give cached memory back after an out-of-memory error, before a retry."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class CacheReads:
    """Cache positions the decode steps' attention reads, against those that are live, summed
    over steps and rows (docs/architecture.md, Reading the cache). Per row of a step: ``live``
    = its position + 1 (the cache its query may see); ``attended`` = the positions the step's
    kernel reads for it (eager: the longest row's span, rounded; captured: the whole slot);
    ``captured`` = what a captured (CUDA graph) step reads for the same step, counted on every
    path so the CPU can report it: the batch padded to its bucket, each row the whole slot."""

    steps: int = 0
    live: int = 0
    attended: int = 0
    captured: int = 0

    def count(self, positions: Sequence[int], attended: int, captured: int) -> None:
        """A step of rows at ``positions`` whose kernel read ``attended`` cache positions in
        all, and a captured step would read ``captured``."""
        self.steps += 1
        self.live += sum(positions) + len(positions)
        self.attended += attended
        self.captured += captured


class ModelRunner:
    """Owns the slot cache of one network and runs its forwards."""

    def __init__(
        self, net: XComposer2, n_slots: int, max_len: int, *, capture: bool | None = None
    ) -> None:
        self.net = net
        self.n_slots = n_slots
        self.max_len = max_len
        param = next(net.parameters())
        self.device = param.device
        self.capture = (self.device.type == "cuda") if capture is None else capture
        self.bmm = masked_bmm(self.device)  # the masked-attention kernel, chosen here once
        self.reads = CacheReads()  # what the decode steps read of the cache
        for name, v in (("n_slots", n_slots), ("max_len", max_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"an engine needs {name} a whole number >= 1, got {v!r}")
        self._allocate_cache()
        cache = net.model.layers[0].attention.kv_cache
        if cache.k.shape[0] < n_slots or cache.max_seq_length < max_len:
            raise RuntimeError("the model's KV cache is smaller than the engine asked for")

    def _allocate_cache(self) -> None:
        """The slot cache, or a one-line DeviceError (code 'oom') when it cannot fit: refused
        before allocating when it is larger than the memory left (a huge ``--batch-size`` must
        not take the machine down), and any allocation failure said the same way."""
        net, dev = self.net, self.device
        cfg = net.config
        dtype = net.model.tok_embeddings.weight.dtype
        need = kv_cache_bytes(cfg, self.n_slots * self.max_len, dtype.itemsize)
        # and one packed prefill's activations (a slot's positions) must fit beside it
        need_run = need + prefill_activation_bytes(cfg, self.max_len) * dtype.itemsize // 2
        held = sum(k.nbytes + v.nbytes for k, v in self._caches()) if self._has_cache() else 0
        free = _free_bytes(dev)
        what = (
            f"the KV cache for {self.n_slots} sequences (each beam counts one) of "
            f"{self.max_len} positions"
        )
        hint = "use fewer at once (--batch-size N, or auto)"
        if free is not None and need_run > free + held:
            have, want = size_text(free + held), size_text(need_run)
            if have == want:
                have, want = f"{free + held:,} bytes", f"{need_run:,} bytes"
            raise DeviceError(
                f"{what} and a prefill beside it need {want}, more than the {have} free on "
                f"{dev}; {hint}",
                code="oom",
            )
        try:
            net.setup_caches(self.n_slots, self.max_len)
        except (torch.cuda.OutOfMemoryError, RuntimeError, TypeError) as e:
            text = str(e).lower()
            if not isinstance(e, torch.cuda.OutOfMemoryError) and not (
                "allocate" in text or "overflow" in text
            ):
                raise
            net.reset_caches()  # a partial cache must not stay behind
            raise DeviceError(
                f"{what} ({size_text(need)}) does not fit on {dev}; {hint}", code="oom"
            ) from None

    def _has_cache(self) -> bool:
        return self.net.model.layers[0].attention.kv_cache is not None

    def _caches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = [layer.attention.kv_cache for layer in self.net.model.layers]
        return [(c.k, c.v) for c in caches]

    # -- vision ------------------------------------------------------------------------------

    def encode_images(self, pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Normalized HD tensors [1, 3, H, W] -> embeddings [N_i, D], all crops in one ViT pass
        (``XComposer2.encode_images``, the vision encode ``chat`` uses too)."""
        return self.net.encode_images(pixels)

    def release_memory(self) -> None:
        """Give cached device memory back after an out-of-memory error, before a retry."""
        release_memory(self.device)

    def sync(self) -> None:
        """Wait for the device's queued work (a timing boundary; nothing to do on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- decoder -----------------------------------------------------------------------------

    def prefill(self, embeds: torch.Tensor, im_mask: torch.Tensor | None, row: int) -> torch.Tensor:
        """Spliced prompt [1, L, D] into cache row ``row`` -> fp32 logits [V] of its last token."""
        return self.net(embeds, im_mask, None, last_only=True, batch=AttentionBatch(row=row))[0, -1]

    def prefill_packed(
        self,
        embeds: Sequence[torch.Tensor],
        im_masks: Sequence[torch.Tensor | None],
        rows: Sequence[int],
        firsts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Several spliced prompts [1, L_i, D] into their cache rows in one forward -> [n, V].

        The prompts are packed back to back: the linear layers run once over every token,
        attention and the cache writes per prompt (``InternLM2ForCausalLM.forward`` segments).
        ``firsts[i]`` > 0: prompt i's tokens start at that position, after a prefix already
        in its row (``load_prefix``). Row i of the result is the fp32 logits of prompt i's
        last token.
        """
        firsts = list(firsts) if firsts is not None else [0] * len(embeds)
        if len(embeds) == 1 and not any(firsts):
            return self.prefill(embeds[0], im_masks[0], rows[0])[None]
        x = torch.cat([e.to(self.device) for e in embeds], dim=1)
        masks = [
            m if m is not None else torch.zeros(e.shape[:2], dtype=torch.bool, device=e.device)
            for m, e in zip(im_masks, embeds, strict=True)
        ]
        im_mask = torch.cat([m.to(self.device) for m in masks], dim=1)
        segments = [(e.shape[1], r, f) for e, r, f in zip(embeds, rows, firsts, strict=True)]
        batch = AttentionBatch(segments=segments, bmm=self.bmm)
        return self.net(x, im_mask, None, last_only=True, batch=batch)[0]

    def save_prefix(self, row: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of the first ``length`` cached positions of ``row``: per layer (k, v)."""
        return [(k[row, :, :length].clone(), v[row, :, :length].clone()) for k, v in self._caches()]

    def load_prefix(self, row: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a saved prefix into positions 0.. of ``row``."""
        for (k, v), (pk, pv) in zip(self._caches(), prefix, strict=True):
            n = pk.shape[1]
            k[row, :, :n] = pk
            v[row, :, :n] = pv

    def decode(self, ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One token per cache row 0..B-1 at its own position -> fp32 logits [B, V]."""
        b = len(ids)
        if not self.capture:
            idt = torch.tensor(ids, dtype=torch.long, device=self.device).view(b, 1)
            pos = torch.tensor(positions, dtype=torch.long, device=self.device).view(b, 1)
            # no row sees past the longest one: skip the empty tail of the slots (a captured
            # step keeps the whole cache, its shapes must not change)
            span = min(-(-(max(positions) + 1) // ATTEND_ROUND) * ATTEND_ROUND, self.max_len)
            self.reads.count(positions, b * span, bucket_for(b, self.n_slots) * self.max_len)
            if b == 1:
                # one row (row 0): generate's batch-1 step, one position for the batch, which
                # skips the per-row mask and flat cache indices (~7% of a step on the CPU)
                x = self.net.embed_tokens(idt)
                batch = AttentionBatch(span=span)
                return self.net(x, None, pos.view(1), last_only=True, batch=batch)[:, -1]
            return _decode_rows(self.net, idt, pos, span, self.bmm)
        n = bucket_for(b, self.n_slots)
        # the graph reads every row of its bucket whole (dummy rows too)
        self.reads.count(positions, n * self.max_len, n * self.max_len)
        pad = n - b  # dummy rows: token 0 at position 0 of free slots
        idt = torch.tensor(list(ids) + [0] * pad, dtype=torch.long, device=self.device)
        pos = torch.tensor(list(positions) + [0] * pad, dtype=torch.long, device=self.device)
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        fn = _compiled_decode_rows(mode)
        if mode is not None:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(self.net, idt.view(n, 1), pos.view(n, 1), None, self.bmm)[:b].clone()

    def verify(
        self, ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], keep: Sequence[int]
    ) -> torch.Tensor:
        """Several tokens per cache row 0..B-1 (a speculative step: each row's last token and
        its draft, padded to one length S) at their own positions -> fp32 logits [N, V] of
        the flat positions ``keep`` (row b, token j is b * S + j). Always eager: the captured
        step keeps one token per row (a verify step would need its own capture per S)."""
        b, s = len(ids), len(ids[0])
        idt = torch.tensor(ids, dtype=torch.long, device=self.device).view(b, s)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device).view(b, s)
        top = max(max(p) for p in positions)
        span = min(-(-(top + 1) // ATTEND_ROUND) * ATTEND_ROUND, self.max_len)
        # read as an eager step reads; a row's live cache ends at its first fed token (the
        # draft's positions are not live until accepted)
        whole = bucket_for(b, self.n_slots) * self.max_len
        self.reads.count([p[0] for p in positions], b * span, whole)
        batch = AttentionBatch(span=span, bmm=self.bmm)
        kt = torch.tensor(keep, dtype=torch.long, device=self.device)
        return self.net(self.net.embed_tokens(idt), None, pos, batch=batch, keep=kt)[0]

    def copy_rows(
        self, src: Sequence[int], dst: Sequence[int], length: int, start: int = 0
    ) -> None:
        """Copy cached positions ``start..length-1`` of rows ``src`` into rows ``dst``.

        Reads everything before writing, so a permutation (a beam reorder) is safe.
        """
        if not src or length <= start:
            return
        s = torch.tensor(list(src), device=self.device)
        d = torch.tensor(list(dst), device=self.device)
        for k, v in self._caches():
            k[d, :, start:length] = k[s, :, start:length]
            v[d, :, start:length] = v[s, :, start:length]
