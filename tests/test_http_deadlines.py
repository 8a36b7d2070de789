"""The request deadline of the service middleware (gateway/http/middleware.py, ``_Deadlines``):
one timer per loop cancels the requests whose time is up, and only those."""

from __future__ import annotations

import asyncio

import pytest

from gateway.http.middleware import _Deadlines


async def _request(deadlines: _Deadlines, seconds: float, *, fail: bool = False) -> str:
    task = deadlines.start()
    try:
        await asyncio.sleep(seconds)
        if fail:
            raise ValueError("the handler failed")
    except asyncio.CancelledError:
        if not deadlines.finish(task):
            raise
        return "timed out"
    except BaseException:
        deadlines.finish(task)
        raise
    deadlines.finish(task)
    return "answered"


async def test_only_requests_over_their_time_are_cancelled() -> None:
    deadlines = _Deadlines(0.2)
    started = asyncio.get_running_loop().time()
    quick, slow = await asyncio.gather(_request(deadlines, 0.05), _request(deadlines, 60))
    took = asyncio.get_running_loop().time() - started
    assert (quick, slow) == ("answered", "timed out")
    assert 0.2 <= took < 0.2 + deadlines.period + 0.5
    assert not deadlines._running and not deadlines._fired  # nothing kept per request


async def test_a_failed_request_leaves_nothing_behind() -> None:
    deadlines = _Deadlines(0.2)
    with pytest.raises(ValueError):
        await _request(deadlines, 0, fail=True)
    assert not deadlines._running
    assert await _request(deadlines, 0.01) == "answered"  # the timer carries on


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    """A shutdown cancelling a request whose time also ran out: the cancellation stands."""
    deadlines = _Deadlines(0.1)
    task = asyncio.ensure_future(_request(deadlines, 60))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._running

    task = asyncio.ensure_future(_request(deadlines, 60))
    while not deadlines._fired:  # our cancellation is requested, not yet delivered
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
