"""The server's context shift on the toy model of test_server_scheduler (llama-server's --context-shift)."""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from test_server_scheduler import ALPHABET, ToyBackend  # noqa: E402

from llamapy.generation.params import SamplerParams  # noqa: E402
from llamapy.server.scheduler import GenRequest, Job, Scheduler  # noqa: E402


class ShiftingToyBackend(ToyBackend):
    """The toy model with a context shift, recorded."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.shifts: list[tuple[int, int, int]] = []

    def context_shift(self, seq, n_keep, n_discard):
        self.shifts.append((seq, n_keep, n_discard))
        del self.cache[seq][n_keep:n_keep + n_discard]


@pytest.mark.parametrize("ctx_shift", [True, False])
def test_a_generation_longer_than_the_slot_context_shifts_or_stops_truncated(ctx_shift):
    be = ShiftingToyBackend(n_slots=1, n_ctx=16, n_batch=16)
    sched = Scheduler(be, ctx_shift=ctx_shift)
    loop = asyncio.new_event_loop()
    q: asyncio.Queue = asyncio.Queue()
    job = Job(loop, q, 0, gen=GenRequest(prompt=list(b"0123456789"), n_predict=40, n_keep=1,
                                         sampling=SamplerParams(ignore_eos=True)), stream=True)
    sched.submit([job])
    while not job.finished:
        sched.step()
    loop.run_until_complete(asyncio.sleep(0))
    events = []
    while not q.empty():
        events.append(q.get_nowait())
    r = events[-1].result
    streamed = "".join(e.text for e in events[:-1])
    if ctx_shift:  # the slot keeps its first position, drops half the rest, and goes on to n_predict
        assert (r.content, r.stop_type, r.truncated, r.n_decoded) == ((ALPHABET * 2)[:40], "limit", False, 40)
        assert be.shifts[0] == (0, 1, 7) and all(sh[1] == 1 for sh in be.shifts)
        assert be.cache[0][0] == ord("0") and r.n_cached == len(be.cache[0])
    else:
        assert (r.content, r.stop_type, r.truncated, r.n_decoded) == ("abcdef", "limit", True, 6)
        assert not be.shifts
    assert streamed == r.content and len(be.cache[0]) <= 16
    # n_predict -1 ends at a full context either way (llama-server's guard against endless generation)
    job = Job(loop, q, 0, gen=GenRequest(prompt=list(b"0123456789"), sampling=SamplerParams(ignore_eos=True)))
    sched.submit([job])
    while not job.finished:
        sched.step()
    loop.run_until_complete(asyncio.sleep(0))
    while not q.empty():
        r = q.get_nowait().result
    assert (r.content, r.stop_type, r.truncated) == ("abcdef", "limit", True)
    loop.close()
