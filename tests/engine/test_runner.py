"""The runner: batch buckets, the per-row and packed decoder paths, the captured step, the slot
cache's size."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine.runner import bucket_for
from ixcdoc.model.internlm2 import AttentionBatch


def test_bucket_sizes() -> None:
    assert [bucket_for(n, 64) for n in (1, 2, 3, 5, 16, 17, 64)] == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_for(20, 24) == 24


def test_per_row_positions_equal_separate_decodes(fixture_dm) -> None:
    """Two rows at different positions in one forward equal each row decoded alone."""
    model = fixture_dm.model
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randn(1, n, d, generator=gen) for n in (5, 9)]
    nxt = torch.tensor([[7], [11]])
    with torch.inference_mode():
        alone = []
        for p, tok in zip(prompts, nxt, strict=True):
            model.reset_caches()
            model.setup_caches(1, 32)
            model(p, None, None)
            pos = torch.tensor([p.shape[1]])
            alone.append(model(model.embed_tokens(tok[None]), None, pos)[0, -1])
        model.reset_caches()
        model.setup_caches(2, 32)
        for row, p in enumerate(prompts):
            model(p, None, None, batch=AttentionBatch(row=row))
        pos = torch.tensor([[5], [9]])
        both = model(model.embed_tokens(nxt), None, pos)[:, -1]
    model.reset_caches()
    torch.testing.assert_close(both, torch.stack(alone), rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_captured_decode_equals_eager_on_cuda() -> None:
    """CUDA graphs per batch bucket (padded rows in free slots) give the eager tokens."""
    from ixcdoc.engine import ChatRequest
    from ixcdoc.runtime import load

    from ..model.upstream import TINY_CKPT
    from .conftest import page

    dm = load(TINY_CKPT, device="cuda", quant="none", dtype="float32")
    reqs = [
        ChatRequest([page(40 + 30 * i, 60, seed=i)], "q", hd=1 + i % 3, max_new_tokens=4 + i)
        for i in range(5)
    ]
    results = {}
    for capture in (False, True):
        eng = dm.engine(n_slots=8, max_len=512, capture=capture)
        handles = [eng.submit(r) for r in reqs]
        eng.run_until_idle()
        results[capture] = [h.result().token_ids for h in handles]
    assert results[True] == results[False]


def test_captured_decode_equals_eager_on_the_cpu(tiny_dm, monkeypatch) -> None:
    """The captured step as the GPU runs it (batch padded to its bucket with dummy rows in free
    slots, the whole cache attended, one fullgraph compile per bucket) gives the eager tokens
    and logits. Compiled with ``aot_eager`` (no inductor C++ build, no CUDA graphs here): what
    it checks is dynamo's capture of the per-row step and the runner's padding."""
    from collections import defaultdict

    from torch._dynamo.utils import counters

    from ixcdoc.engine import ChatRequest
    from ixcdoc.engine import runner as runner_mod

    from .conftest import page

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "aot_eager"})
    )
    runner_mod._compiled_decode_rows.cache_clear()
    torch._dynamo.reset()
    reqs = [
        ChatRequest([page(40 + 30 * i, 60, seed=i)], "q", hd=1 + i % 3, max_new_tokens=3 + i)
        for i in range(4)
    ]
    reqs.append(ChatRequest([page(70, 50, seed=9)], "q", hd=2, max_new_tokens=7, num_beams=2))
    results, graphs = {}, {}
    try:
        for capture in (False, True):
            logits: dict[int, list[torch.Tensor]] = defaultdict(list)
            eng = tiny_dm.engine(
                n_slots=8,
                max_len=512,
                capture=capture,
                logits_hook=lambda h, row, logits=logits: logits[h.id].append(row.clone()),
            )
            handles = [eng.submit(r) for r in reqs]
            counters.clear()
            eng.run_until_idle()
            tiny_dm.model.reset_caches()
            graphs[capture] = counters["stats"]["unique_graphs"]
            results[capture] = [(h.result().token_ids, torch.stack(logits[h.id])) for h in handles]
    finally:
        runner_mod._compiled_decode_rows.cache_clear()
        torch._dynamo.reset()
    for (eager_ids, eager_logits), (cap_ids, cap_logits) in zip(
        results[False], results[True], strict=True
    ):
        assert cap_ids == eager_ids
        torch.testing.assert_close(cap_logits, eager_logits, rtol=0, atol=1e-4)
    # 6 rows (4 pages, one with 2 beams), then fewer as answers end; the beams (7 tokens) end
    # last: buckets 8, 4 and 2, one graph each
    assert (graphs[False], graphs[True]) == (0, 3)


def test_a_cache_larger_than_the_memory_left_is_refused_before_allocating(
    tiny_dm, monkeypatch
) -> None:
    """Refused: a KV cache plus one packed prefill's activations (a slot's positions) larger
    than the memory left, counting the cache being replaced as free. Nothing is freed then."""
    from ixcdoc.engine import runner as runner_mod
    from ixcdoc.errors import DeviceError, UsageError

    model = tiny_dm.model
    eng = tiny_dm.engine(n_slots=2, max_len=256)  # a cache is in place
    held = sum(k.nbytes + v.nbytes for k, v in eng.runner._caches())

    def prefill(positions: int) -> int:  # float32 here: twice the memory model's bf16
        return runner_mod.prefill_activation_bytes(model.config, positions) * 2

    monkeypatch.setattr(runner_mod, "_free_bytes", lambda dev: prefill(256))
    tiny_dm.engine(n_slots=2, max_len=256)  # the same cache again, and room for a prefill
    with pytest.raises(DeviceError, match="of 512 positions and a prefill beside it") as info:
        tiny_dm.engine(n_slots=2, max_len=512)  # 2 x held + prefill(512) > prefill(256) + held
    assert info.value.code == "oom"
    assert model.model.layers[0].attention.kv_cache.max_seq_length == 256  # refused, kept
    monkeypatch.setattr(runner_mod, "_free_bytes", lambda dev: held + prefill(512))
    tiny_dm.engine(n_slots=2, max_len=512)  # 2 x held + prefill(512): fits exactly
    monkeypatch.setattr(runner_mod, "_free_bytes", lambda dev: prefill(512) - 1)
    with pytest.raises(DeviceError, match=r"2 sequences .* of 512 positions"):
        tiny_dm.engine(n_slots=2, max_len=512)  # one byte short, even reusing the held cache
    with pytest.raises(UsageError):
        tiny_dm.engine(n_slots=0, max_len=256)
    model.reset_caches()


def test_an_allocation_failure_is_a_device_error_and_leaves_no_partial_cache(
    tiny_dm, monkeypatch
) -> None:
    from ixcdoc.errors import DeviceError

    model = tiny_dm.model
    model.reset_caches()
    real = type(model).setup_caches

    def half_then_fail(self, *a, **k):
        real(self, *a, **k)  # allocated, then the allocator gives up on a later tensor
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(type(model), "setup_caches", half_then_fail)
    with pytest.raises(DeviceError, match="does not fit"):
        tiny_dm.engine(n_slots=2, max_len=256)
    assert model.model.layers[0].attention.kv_cache is None

    def other(self, *a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(type(model), "setup_caches", other)
    with pytest.raises(RuntimeError, match="something else"):
        tiny_dm.engine(n_slots=2, max_len=256)


def test_an_engine_refuses_arguments_that_are_not_counts(tiny_dm) -> None:
    from ixcdoc.errors import UsageError

    for bad in (0, -1, 2.5, True, "2", None):
        with pytest.raises(UsageError, match="n_slots"):
            tiny_dm.engine(n_slots=bad, max_len=256)
    with pytest.raises(UsageError, match="max_len"):
        tiny_dm.engine(n_slots=2, max_len=256.0)
    with pytest.raises(UsageError, match="max_batch"):
        tiny_dm.chat_batch([], max_batch=0)


def test_with_memory_unknown_a_cache_too_large_to_address_is_still_one_error(
    tiny_dm, monkeypatch
) -> None:
    """No /proc/meminfo (or no CUDA query): nothing to compare with, so torch is asked and its
    overflow errors are reported as the cache not fitting, not as a raw C++ traceback."""
    from ixcdoc.engine import runner as runner_mod
    from ixcdoc.errors import DeviceError

    monkeypatch.setattr(runner_mod, "_free_bytes", lambda dev: None)
    for n in (10**20, 2**62):
        with pytest.raises(DeviceError, match="does not fit"):
            tiny_dm.engine(n_slots=n, max_len=256)
    assert tiny_dm.model.model.layers[0].attention.kv_cache is None


def test_packed_prompts_equal_separate_prefills(fixture_dm) -> None:
    """Three fresh prompts (image tokens among them) in one packed row give each the logits,
    and leave each the cache, that it gets from a prefill of its own."""
    model = fixture_dm.model
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randn(1, n, d, generator=gen) for n in (6, 4, 9)]
    masks = [torch.tensor([[False, True, True, True, False, False]]), None, None]
    rows = [2, 0, 1]
    with torch.inference_mode():
        model.reset_caches()
        model.setup_caches(3, 32)
        alone = [
            model(p, m, None, last_only=True, batch=AttentionBatch(row=r))[0, -1]
            for p, m, r in zip(prompts, masks, rows, strict=True)
        ]
        cache_alone = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
        model.reset_caches()
        model.setup_caches(3, 32)
        im = torch.cat([masks[0], torch.zeros(1, 13, dtype=torch.bool)], dim=1)
        segments = [(p.shape[1], r, 0) for p, r in zip(prompts, rows, strict=True)]
        batch = AttentionBatch(segments=segments)
        out = model(torch.cat(prompts, dim=1), im, None, last_only=True, batch=batch)[0]
        cache_packed = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
    model.reset_caches()
    assert out.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(out, torch.stack(alone), rtol=0, atol=1e-5)
    for (ka, va), (kp, vp) in zip(cache_alone, cache_packed, strict=True):
        for p, r in zip(prompts, rows, strict=True):
            n = p.shape[1]
            torch.testing.assert_close(kp[r, :, :n], ka[r, :, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(vp[r, :, :n], va[r, :, :n], rtol=0, atol=1e-5)


def test_prompts_that_continue_a_saved_prefix_equal_full_prefills(fixture_dm) -> None:
    """Two prompts sharing a 7-token prefix: one prefilled whole, the other packed beside a
    fresh prompt as its 5 remaining tokens after the prefix's KV is copied into its row,
    give the logits and the cache of full prefills."""
    model = fixture_dm.model
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randn(1, 7, d, generator=gen)
    full = [torch.cat([prefix, torch.randn(1, n, d, generator=gen)], dim=1) for n in (5, 3)]
    other = torch.randn(1, 4, d, generator=gen)
    tail_mask = torch.tensor([[False, True, True, False, False]])
    with torch.inference_mode():
        model.reset_caches()
        model.setup_caches(3, 32)
        m0 = torch.cat([torch.zeros(1, 7, dtype=torch.bool), tail_mask], dim=1)
        alone = [
            model(full[0], m0, None, last_only=True, batch=AttentionBatch(row=0))[0, -1],
            model(other, None, None, last_only=True, batch=AttentionBatch(row=2))[0, -1],
        ]
        cache_alone = [(c.k.clone(), c.v.clone()) for c in _caches(model)]

        model.reset_caches()
        model.setup_caches(3, 32)
        # the prefix arrives with another prompt
        model(full[1], None, None, batch=AttentionBatch(row=1))
        for c in _caches(model):  # copy positions 0..6 of row 1 into row 0
            c.k[0, :, :7], c.v[0, :, :7] = c.k[1, :, :7], c.v[1, :, :7]
        x = torch.cat([full[0][:, 7:], other], dim=1)
        im = torch.cat([tail_mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
        batch = AttentionBatch(segments=[(5, 0, 7), (4, 2, 0)])
        out = model(x, im, None, last_only=True, batch=batch)[0]
        cache_packed = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
    model.reset_caches()
    torch.testing.assert_close(out, torch.stack(alone), rtol=0, atol=1e-5)
    for (ka, va), (kp, vp) in zip(cache_alone, cache_packed, strict=True):
        for row, n in ((0, 12), (2, 4)):
            torch.testing.assert_close(kp[row, :, :n], ka[row, :, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(vp[row, :, :n], va[row, :, :n], rtol=0, atol=1e-5)


def _caches(model):
    return [layer.attention.kv_cache for layer in model.model.layers]


def test_a_packed_row_refuses_inconsistent_lengths(fixture_dm) -> None:
    model = fixture_dm.model
    x = torch.zeros(1, 5, model.config.hidden_size)
    with pytest.raises(ValueError, match="packed row"):
        model(x, None, None, batch=AttentionBatch(segments=[(3, 0, 0)]))


def test_cache_reads_count_the_live_cache_and_what_each_kind_of_step_reads(fixture_dm) -> None:
    """Two requests decoding side by side, without drafts: each step's rows count their
    position + 1 as live; an eager step reads the longest row's span rounded up to 64 for
    every row, a captured one the whole slot for each row of its bucket."""
    from ixcdoc.engine import ChatRequest
    from ixcdoc.engine.runner import ATTEND_ROUND

    from .conftest import page, run_engine

    reqs = [
        ChatRequest([page(40, 30, seed=1)], "Hi", hd=1, max_new_tokens=9, speculate="off"),
        ChatRequest([page(90, 90, seed=2)], "Transcribe.", hd=4, max_new_tokens=5, speculate="off"),
    ]
    handles, _, _, eng = run_engine(fixture_dm, reqs, n_slots=4, after_steps=0)
    answers = [h.result() for h in handles]
    assert [(len(a.token_ids), a.stop_reason) for a in answers] == [
        (9, "max_new_tokens"),
        (5, "max_new_tokens"),
    ]
    # decode step s (s = 0, 1, ...) feeds a request's token s + 1 at position prompt + s
    rows = [[a.prompt_tokens + s for s in range(len(a.token_ids) - 1)] for a in answers]
    live = attended = captured = steps = 0
    for s in range(max(len(r) for r in rows)):
        pos = [r[s] for r in rows if s < len(r)]
        steps += 1
        live += sum(p + 1 for p in pos)
        attended += len(pos) * -(-(max(pos) + 1) // ATTEND_ROUND) * ATTEND_ROUND
        captured += (1 if len(pos) == 1 else 2) * 1024  # buckets 1 and 2 of max_len 1024
    reads = eng.runner.reads
    assert (reads.steps, reads.live, reads.attended, reads.captured) == (
        steps,
        live,
        attended,
        captured,
    )
