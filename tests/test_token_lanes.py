"""The worker threads token calls run on (gateway/token/lanes.py): results, errors, order,
cancellation and shutdown.  Plain Python callables stand in for the blocking calls here;
Token.run goes through a lane in every token test."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from gateway.token.lanes import Lane


async def test_results_and_errors_come_back_to_the_caller() -> None:
    lane = Lane(2, "test")
    try:
        assert await lane.run(lambda: 41 + 1) == 42
        with pytest.raises(KeyError, match="boom"):
            await lane.run(lambda: {}["boom"])
        names = await asyncio.gather(*(lane.run(lambda: threading.current_thread().name) for _ in range(50)))
        assert set(names) <= {"test_0", "test_1"} and threading.current_thread().name not in names
    finally:
        lane.close()


async def test_many_calls_finishing_together_all_get_their_own_answer() -> None:
    lane = Lane(4, "test")
    try:
        def square(i: int) -> int:
            time.sleep(0.0001 * (i % 3))
            return i * i

        results = await asyncio.gather(*(lane.run(lambda i=i: square(i)) for i in range(2000)))
        assert results == [i * i for i in range(2000)]
    finally:
        lane.close()


async def test_a_call_cancelled_while_queued_never_runs() -> None:
    """As with run_in_executor: a request that went away before its turn starts nothing in the token."""
    lane = Lane(1, "test")
    release = threading.Event()
    ran: list[str] = []
    try:
        first = lane.run(lambda: (release.wait(5), ran.append("first")))
        second = lane.run(lambda: ran.append("second"))
        second.cancel()
        release.set()
        await first
        assert await lane.run(lambda: "after") == "after"
        assert ran == ["first"]
    finally:
        lane.close()


async def test_a_started_call_runs_to_its_end_and_its_answer_is_dropped() -> None:
    lane = Lane(1, "test")
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    try:
        def call() -> str:
            started.set()
            release.wait(5)
            done.set()
            return "late"

        future = lane.run(call)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        future.cancel()
        release.set()
        assert await lane.run(lambda: "next") == "next"
        assert done.is_set() and future.cancelled()
    finally:
        lane.close()


def test_close_cancels_what_is_queued_and_stops_the_threads() -> None:
    started, release = threading.Event(), threading.Event()

    async def scenario() -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        lane = Lane(1, "test-close")
        loop = asyncio.get_running_loop()
        running = lane.run(lambda: (started.set(), release.wait(5)) and None)
        queued = lane.run(lambda: None)
        await loop.run_in_executor(None, started.wait, 5)
        closing = loop.run_in_executor(None, lane.close)
        await asyncio.sleep(0.05)
        release.set()
        await closing
        await running
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="closed"):
            lane.run(lambda: None)
        return running, queued

    running, queued = asyncio.run(scenario())
    assert running.done() and not running.cancelled() and queued.cancelled()
    assert not [t for t in threading.enumerate() if t.name.startswith("test-close")]


def test_one_lane_serves_event_loops_one_after_another() -> None:
    """Tests (and the CLI) run a token under several loops in turn."""
    lane = Lane(2, "test")
    try:
        async def ask(i: int) -> int:
            return await asyncio.wait_for(lane.run(lambda: i * 10), 5)

        for i in range(3):
            assert asyncio.run(ask(i)) == i * 10
    finally:
        lane.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
async def test_lane_threads_do_not_preempt_the_event_loop_on_wake_up() -> None:
    """Lane threads run under SCHED_BATCH (see ``_mildly_disfavoured``); the caller's thread is untouched."""
    lane = Lane(2, "test")
    try:
        policies = await asyncio.gather(*(lane.run(lambda: os.sched_getscheduler(0)) for _ in range(8)))
        assert set(policies) == {os.SCHED_BATCH}
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        lane.close()
