"""EngineBackend.close when the engine does not stop in time: each job is reported once."""

from __future__ import annotations

from typing import Any

from ixcdoc.serve.backend import Cancelled
from tests.serve.helpers import TIMEOUT, ProbeEngineBackend
from tests.serve.test_engine_backend import Outcome, _keep, _request


def test_a_job_reported_at_a_timed_out_close_is_not_reported_again(looping: Any) -> None:
    """close() gives up waiting, reports the running job as cancelled and leaves the engine's
    step to finish on its own; when that step then ends the job, nobody hears of it twice."""
    backend = ProbeEngineBackend(looping, n_slots=1, max_len=4200, hold=True)
    backend.start()
    outcome = Outcome()
    backend.submit(_request("runs", max_new=4000), _keep, outcome)
    assert backend.entered.wait(TIMEOUT)  # the engine thread is held inside the prefill
    engine = backend.engine
    thread = engine._thread
    backend.close(timeout=0)  # the held step cannot end: close times out at once
    assert outcome.calls == 1 and isinstance(outcome.error, Cancelled)
    assert thread.is_alive()  # the engine's step goes on
    backend.release.set()  # let that step run: the sequence ends at its first token
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert outcome.calls == 1 and isinstance(outcome.error, Cancelled)
    looping.model.reset_caches()  # close left the cache to the step that was still running
