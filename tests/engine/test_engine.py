"""The loop (engine.py): streaming, a background thread, submit's refusals, close, and the
failures it isolates (out of memory in a prefill or a decode step, a failing sampling)."""

from __future__ import annotations

import threading

import pytest
import torch

from ixcdoc.engine import ChatRequest
from ixcdoc.errors import DeviceError, UsageError

from .conftest import chat_reference, page


def _reqs(n: int, tokens: int = 6) -> list[ChatRequest]:
    return [
        ChatRequest(
            [page(60 + 20 * i, 50, seed=i)],
            f"Question {i}?",
            hd=1 + i % 3,
            max_new_tokens=tokens + i,
        )
        for i in range(n)
    ]


def test_tokens_stream_in_order_and_done_fires_once(tiny_dm) -> None:
    reqs = _reqs(3)
    streamed: dict[int, list[int]] = {i: [] for i in range(3)}
    done: list[int] = []
    eng = tiny_dm.engine(n_slots=3, max_len=512)
    handles = [
        eng.submit(
            r,
            on_token=lambda t, i=i: streamed[i].append(t),
            on_done=lambda h, i=i: done.append(i),
        )
        for i, r in enumerate(reqs)
    ]
    eng.run_until_idle()
    tiny_dm.model.reset_caches()
    for i, (r, h) in enumerate(zip(reqs, handles, strict=True)):
        assert streamed[i] == h.result().token_ids == chat_reference(tiny_dm, r).token_ids
    assert sorted(done) == [0, 1, 2]
    # the shorter answers finish first: each leaves the batch as soon as it is done
    assert done == [0, 1, 2]


def test_background_thread_serves_submissions_from_other_threads(tiny_dm) -> None:
    reqs = _reqs(4, tokens=4)
    eng = tiny_dm.engine(n_slots=2, max_len=512)
    eng.start()
    handles: list = [None] * 4
    try:

        def client(i: int) -> None:
            handles[i] = eng.submit(reqs[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        answers = [h.result(timeout=120) for h in handles]
    finally:
        eng.close()
        tiny_dm.model.reset_caches()
    for r, a in zip(reqs, answers, strict=True):
        assert a.token_ids == chat_reference(tiny_dm, r).token_ids


def test_a_started_engine_owns_the_cache_until_it_is_closed(tiny_dm) -> None:
    """chat on the same model would rebuild the KV cache under the engine's running
    sequences (a different answer, seen as a flaky server test): while the engine runs, chat
    and every other caller that rebuilds the cache is refused with a line naming the engine."""
    [req] = _reqs(1, tokens=3)
    eng = tiny_dm.engine(n_slots=2, max_len=512)
    eng.start()
    try:
        with pytest.raises(UsageError, match=r"chat: Engine\(2 slots x 512 positions, started\)"):
            tiny_dm.chat(req.images, req.query, hd=req.hd, max_new_tokens=3)
        with pytest.raises(UsageError, match="chat_batch: Engine"):
            tiny_dm.chat_batch([req])
        with pytest.raises(UsageError, match="prompt_logits: Engine"):
            tiny_dm.prompt_logits(req.images, req.query, hd=req.hd)
        with pytest.raises(UsageError, match=r"engine\(\): Engine"):
            tiny_dm.engine(n_slots=1, max_len=256)
        with pytest.raises(UsageError, match="page_relevance: Engine"):
            tiny_dm.page_relevance(req.images, req.query, hd=req.hd)
        served = eng.submit(req).result(timeout=120)  # the engine itself goes on
    finally:
        eng.close()
    assert served.token_ids == chat_reference(tiny_dm, req).token_ids  # free again once closed
    tiny_dm.model.reset_caches()


def test_oom_in_one_prefill_fails_only_that_request(fixture_dm) -> None:
    reqs = _reqs(4)
    victim = reqs[1]

    def fault(req: ChatRequest) -> None:
        if req is victim:
            raise torch.cuda.OutOfMemoryError("injected")

    eng = fixture_dm.engine(n_slots=2, max_len=512, fault_hook=fault)
    handles = [eng.submit(r) for r in reqs]
    eng.run_until_idle()
    fixture_dm.model.reset_caches()
    with pytest.raises(DeviceError) as info:
        handles[1].result()
    assert info.value.code == "oom" and "HD2" in str(info.value)
    for i in (0, 2, 3):
        assert handles[i].result().token_ids == chat_reference(fixture_dm, reqs[i]).token_ids
    assert eng.slots.used == 0 and not eng.running


def test_chat_batch_return_exceptions(fixture_dm, monkeypatch) -> None:
    from ixcdoc.engine import engine as engine_mod

    reqs = _reqs(2, tokens=2)
    real = engine_mod.Engine.__init__

    def init(self, *a, **kw):
        kw["fault_hook"] = lambda r: (
            (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")) if (r is reqs[0]) else None
        )
        real(self, *a, **kw)

    monkeypatch.setattr(engine_mod.Engine, "__init__", init)
    out = fixture_dm.chat_batch(reqs, return_exceptions=True)
    assert isinstance(out[0], DeviceError) and out[0].code == "oom"
    assert out[1].token_ids == chat_reference(fixture_dm, reqs[1]).token_ids
    with pytest.raises(DeviceError):
        fixture_dm.chat_batch(reqs)


def test_submit_rejects_what_cannot_fit(fixture_dm) -> None:
    eng = fixture_dm.engine(n_slots=2, max_len=256)
    with pytest.raises(UsageError, match="positions"):
        eng.submit(ChatRequest([page(40, 30, 0)], "q", hd=1, max_new_tokens=1000))
    with pytest.raises(UsageError, match="slots"):
        eng.submit(ChatRequest([page(40, 30, 0)], "q", hd=1, num_beams=3))
    with pytest.raises(UsageError, match="temperature"):
        eng.submit(ChatRequest([page(40, 30, 0)], "q", hd=1, do_sample=True, temperature=0))
    fixture_dm.model.reset_caches()


def test_an_unexpected_admission_error_fails_those_requests_instead_of_losing_them(
    tiny_dm, monkeypatch
) -> None:
    """run_forever swallows a step's error; the requests it was admitting must still finish
    (with the error), or a server's clients would wait forever."""
    eng = tiny_dm.engine(n_slots=4, max_len=1024)

    def broken(pixels):  # a bug in the vision batch, not out of memory
        raise RuntimeError("vision batch broke")

    monkeypatch.setattr(eng.runner, "encode_images", broken)
    handles = [eng.submit(r) for r in _reqs(2)]
    eng.start()
    try:
        for h in handles:
            assert h.wait(timeout=60), "a request was lost"
            assert isinstance(h.error, RuntimeError) and "vision batch broke" in str(h.error)
        assert eng.idle
    finally:
        eng.close()
        tiny_dm.model.reset_caches()


def test_oom_in_a_decode_step_makes_the_top_rows_wait_and_loses_nothing(
    fixture_dm, monkeypatch
) -> None:
    """A decode step that runs out of memory fails nobody: the sequences on the top rows wait
    (keeping their rows and tokens) while rows 0..1 decode, until rows free up; every answer
    still equals chat."""
    from ixcdoc.engine.runner import ModelRunner

    real = ModelRunner.decode
    rows: list[int] = []

    def oom_once_at_three_rows(self, ids, positions):
        rows.append(len(ids))
        if rows == [3]:
            raise torch.cuda.OutOfMemoryError("injected")
        return real(self, ids, positions)

    monkeypatch.setattr(ModelRunner, "decode", oom_once_at_three_rows)
    reqs = _reqs(3, tokens=8)
    eng = fixture_dm.engine(n_slots=3, max_len=512)
    handles = [eng.submit(r) for r in reqs]
    eng.run_until_idle()
    fixture_dm.model.reset_caches()
    assert rows[0] == 3 and max(rows[1:]) == 2  # after the error, two rows a step at most
    for r, h in zip(reqs, handles, strict=True):
        assert h.result().token_ids == chat_reference(fixture_dm, r).token_ids
    assert eng.slots.used == 0 and not eng.running and eng.row_cap is None


def test_oom_in_a_decode_step_with_one_row_fails_only_it(fixture_dm, monkeypatch) -> None:
    from ixcdoc.engine.runner import ModelRunner

    def oom(self, ids, positions):
        raise torch.cuda.OutOfMemoryError("injected")

    monkeypatch.setattr(ModelRunner, "decode", oom)
    eng = fixture_dm.engine(n_slots=2, max_len=512)
    h = eng.submit(_reqs(1, tokens=4)[0])
    eng.run_until_idle()  # handled: the request fails, the engine does not
    fixture_dm.model.reset_caches()
    assert h.done and isinstance(h.error, DeviceError) and h.error.code == "oom"
    assert eng.slots.used == 0 and not eng.running


def test_a_request_whose_sampling_fails_fails_alone(fixture_dm, monkeypatch) -> None:
    """chat_batch(return_exceptions=True) keeps every other answer when one request fails
    while its token is sampled: at its first token (torch's error for a probability tensor
    with NaN, injected) or in a later decode step (an error injected into its sampling). A
    temperature small enough to make every probability NaN is refused up front now
    (generate.MIN_TEMPERATURE), so the first-token failure is injected too."""
    from ixcdoc.engine import admission, decode

    reqs = _reqs(4, tokens=5)
    reqs[1].do_sample, reqs[1].temperature, reqs[1].seed = True, 0.9, 1
    reqs[2].do_sample, reqs[2].temperature, reqs[2].seed = True, 0.7, 2
    real = decode.choose_token
    calls: list[float] = []

    def fails_in_a_decode_step(logits, history, cfg, generator):
        if cfg.temperature == 0.9:  # its first token, at the prefill
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if cfg.temperature == 0.7:
            calls.append(cfg.temperature)
            if len(calls) == 2:  # its second token: a decode step, not the prefill
                raise RuntimeError("injected sampling failure")
        return real(logits, history, cfg, generator)

    for room in (admission, decode):  # the first token, and the decode steps
        monkeypatch.setattr(room, "choose_token", fails_in_a_decode_step)
    out = fixture_dm.chat_batch(reqs, max_batch=4, return_exceptions=True)
    assert isinstance(out[1], RuntimeError) and "probability tensor" in str(out[1])
    assert isinstance(out[2], RuntimeError) and "injected" in str(out[2])
    for i in (0, 3):
        assert out[i].token_ids == chat_reference(fixture_dm, reqs[i]).token_ids
    calls.clear()
    with pytest.raises(RuntimeError, match="probability tensor"):  # the first error, at the end
        fixture_dm.chat_batch(reqs, max_batch=4)


def test_close_fails_what_is_left_and_refuses_new_requests(tiny_dm) -> None:
    """No result() waits for ever: requests queued or running when the engine closes fail
    with engine_closed, with or without the background thread; a submit after close is a
    usage error."""
    from ixcdoc.errors import IxcdocError

    eng = tiny_dm.engine(n_slots=2, max_len=512)
    waiting = [eng.submit(r) for r in _reqs(3)]
    eng.step()  # two running, one queued
    assert eng.close()
    for h in waiting:
        assert h.wait(timeout=0)
        with pytest.raises(IxcdocError) as info:
            h.result(timeout=0)
        assert info.value.code == "engine_closed"
    with pytest.raises(UsageError, match="closed"):
        eng.submit(_reqs(1)[0])
    assert eng.slots.used == 0 and not eng.running

    eng = tiny_dm.engine(n_slots=1, max_len=512)
    eng.start()
    handles = [eng.submit(r) for r in _reqs(3, tokens=40)]
    assert eng.close(timeout=60)
    for h in handles:  # finished, or failed by the close: never left waiting
        assert h.wait(timeout=0), "a request submitted before close() never finished"
        assert h.answer is not None or h.error.code == "engine_closed"
    assert any(h.error is not None for h in handles)
    tiny_dm.model.reset_caches()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"do_sample": True, "temperature": float("nan")}, "temperature must be a finite"),
        ({"temperature": float("inf")}, "temperature must be a finite"),
        ({"top_p": float("nan")}, "top_p must be a finite"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite"),
        ({"top_k": 2.5}, "top_k must be a whole number"),
        ({"seed": 2**70}, "seed must be a whole number"),
        ({"seed": -(2**64)}, "seed must be a whole number"),
    ],
)
def test_absurd_options_are_usage_errors_in_chat_and_the_engine(fixture_dm, options, says):
    img = page(40, 30, 0)
    with pytest.raises(UsageError, match=says):
        fixture_dm.chat([img], "q", hd=1, max_new_tokens=2, **options)
    with pytest.raises(UsageError, match=says):
        fixture_dm.chat_batch([ChatRequest([img], "q", hd=1, max_new_tokens=2, **options)])
    fixture_dm.model.reset_caches()


def test_a_beam_search_that_straddles_the_row_cap_waits_and_gives_the_same_answer(
    fixture_dm, monkeypatch
) -> None:
    """A greedy request on row 0 and a 2-beam one on rows 1-2; the 3-row step runs out of
    memory, so only rows 0-1 decode: the beams (on both sides of the cap) wait, fed rows
    below the cap write what their own step writes again. Same answers as without the error."""
    from ixcdoc.engine.runner import ModelRunner

    reqs = _reqs(2, tokens=6)
    reqs[1].num_beams = 2

    def answers() -> list[list[int]]:
        eng = fixture_dm.engine(n_slots=3, max_len=512)
        handles = [eng.submit(r) for r in reqs]
        eng.run_until_idle()
        fixture_dm.model.reset_caches()
        assert eng.slots.used == 0
        return [h.result().token_ids for h in handles]

    expected = answers()
    real = ModelRunner.decode
    rows: list[int] = []

    def oom_once_at_three_rows(self, ids, positions):
        rows.append(len(ids))
        if len(rows) == 1:  # the first step (three rows: asserted below)
            raise torch.cuda.OutOfMemoryError("injected")
        return real(self, ids, positions)

    monkeypatch.setattr(ModelRunner, "decode", oom_once_at_three_rows)
    assert answers() == expected
    assert rows[0] == 3 and rows[1] == 2
