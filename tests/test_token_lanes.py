"""The worker threads token calls run on (gateway/token/lanes.py): results, errors, order,
cancellation and shutdown.  Plain Python callables stand in for the blocking calls here;
Token.run goes through a lane in every token test."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from gateway.token import lanes
from gateway.token.lanes import Lane, keep_to_cpus, spread_while

T = TypeVar("T")


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


def _in_a_kept_thread(cpu: int, body: Callable[[], T]) -> T:
    """Run ``body`` in a new thread after ``keep_to_cpus({cpu})``, as a placed worker's main thread
    runs (so the pytest thread keeps its CPUs)."""
    out: list[Any] = []

    def run() -> None:
        try:
            keep_to_cpus({cpu})
            out.append(("ok", body()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            out.append(("err", exc))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_kept_worker_s_lanes_stay_on_its_cpu_while_calls_are_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_to_cpus: lane threads started afterwards keep to the CPU while their calls are short,
    use every CPU while their average call is long (_Placement), and come back after; a
    ``spread`` lane and ``spread_while`` use every CPU."""
    monkeypatch.setattr(lanes, "_spread_cpus", None)  # keep_to_cpus sets it for the process
    every = frozenset(os.sched_getaffinity(0))
    cpu = min(every)
    where = lambda: frozenset(os.sched_getaffinity(0))  # noqa: E731

    def body() -> dict[str, Any]:
        lane, spread = Lane(1, "kept"), Lane(1, "spread", spread=True)
        try:
            async def calls() -> dict[str, Any]:
                def long() -> frozenset[int]:
                    time.sleep(0.003)
                    return where()

                seen: dict[str, Any] = {"caller": where()}
                seen["short"] = {await lane.run(where) for _ in range(20)}
                seen["long"] = [await lane.run(long) for _ in range(30)]
                seen["short again"] = [await lane.run(where) for _ in range(60)]
                seen["spread lane"] = await spread.run(where)

                def in_spread_while() -> tuple[frozenset[int], frozenset[int]]:
                    with spread_while():
                        during = where()
                    return during, where()

                seen["spread_while"] = await lane.run(in_spread_while)
                return seen

            return asyncio.run(calls())
        finally:
            lane.close()
            spread.close()

    seen = _in_a_kept_thread(cpu, body)
    home = frozenset({cpu})
    assert seen["caller"] == home and seen["short"] == {home}
    assert seen["long"][0] == home and seen["long"][-1] == every  # after the average passed 1 ms
    assert seen["short again"][-1] == home
    assert seen["spread lane"] == every
    assert seen["spread_while"] == (every, home)
    assert where() == every  # the test's own thread was never narrowed
