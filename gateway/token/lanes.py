"""Worker threads for blocking token calls, with less work per call than
``loop.run_in_executor`` on a ``ThreadPoolExecutor``.

Every request the gateway serves makes at least one token call, so the hop to
a worker thread and back is paid per request.  ``run_in_executor`` pays it in
Python on the event loop: the executor's locks and semaphore, a concurrent
future chained to an asyncio future, and one wake-up of the loop per finished
call.  A :class:`Lane` hands a call over through a ``SimpleQueue`` (C code) and
answers an asyncio future directly; calls that finish while the loop is busy
are answered together, with one wake-up (measured in ``make bench``,
``gw-hem-ecdh``; see docs/benchmarks.md).

Semantics kept from ``run_in_executor``: a call whose future was cancelled
before a thread picked it up never runs (so a cancelled request cannot start
creating a key), a call that started runs to its end, and the result of a
call whose caller went away is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any, Callable, Final, Iterator, TypeVar

T = TypeVar("T")

_STOP: Any = object()


class _Answers:
    """Finished calls waiting for one event loop to hand their results over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._scheduled = False

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """From a worker thread.  Append first, then look at the flag: either the
        scheduled drain sees this answer, or the flag is down and this schedules one."""
        self._ready.append((future, result, error))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody waits any more
                self._ready.clear()

    def _drain(self) -> None:
        self._scheduled = False  # lowered before reading, so a later put schedules again
        ready = self._ready
        while ready:
            future, result, error = ready.popleft()
            if future.done():  # cancelled meanwhile (the request timed out or went away)
                continue
            if error is None:
                future.set_result(result)
            elif isinstance(error, asyncio.CancelledError):  # queued when the lane closed
                future.cancel()
            else:
                future.set_exception(error)


def _mildly_disfavoured() -> None:
    """Put the calling thread under Linux's SCHED_BATCH policy (elsewhere: nothing).

    Handing a call over wakes a lane thread while the event loop thread still
    holds the interpreter lock.  Under the default policy the woken thread,
    having slept, preempts the event loop thread on a busy CPU, runs until it
    needs the lock, and blocks again: two context switches for nothing, on
    every call.  SCHED_BATCH threads do not preempt on wake-up; they run on an
    idle CPU at once, or when the event loop thread next blocks (and so lets
    go of the lock).  Measured (``gw-hem-ecdh``, c=16, two workers): 5.8 to
    3.0 context switches per request.  No privilege is needed to lower one's
    own policy.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused by a sandbox
        pass


# The CPUs this process could use before keep_to_cpus narrowed them (None: never narrowed).
_spread_cpus: set[int] | None = None


def keep_to_cpus(cpus: set[int]) -> None:
    """Keep the calling thread, and every thread it starts from now on, to ``cpus`` (Linux).

    A worker calls this first thing when its supervisor placed it (gateway/server.py,
    ``worker_cpus``): the hand-overs between its event loop, token threads and audit
    thread then wake a thread on the same CPU.  Threads that serve every process on
    the token (SoftHSM2's writer, writerelay.py) call :func:`spread_out`.
    """
    global _spread_cpus
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):  # not Linux, or a CPU this process may not use
        return
    _spread_cpus = before


def _set_cpus(cpus: set[int]) -> None:
    """The calling thread's CPUs (a refusal leaves them as they were: placement is an optimisation)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)


def spread_out() -> None:
    """Let the calling thread use every CPU the process could before :func:`keep_to_cpus`.

    For threads whose calls are long (SoftHSM2 writes object files) and come from
    every worker: kept to one worker's CPU, all the token's writes would queue there.
    """
    if _spread_cpus is not None:
        _set_cpus(_spread_cpus)


@contextlib.contextmanager
def spread_while() -> Iterator[None]:
    """:func:`spread_out` for the duration of a long call on a thread kept to one CPU."""
    if _spread_cpus is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    spread_out()
    try:
        yield
    finally:
        _set_cpus(mine)


class _Placement:
    """Where a lane thread of a worker kept to one CPU runs: on that CPU while its calls are
    short, on every CPU while they are long.

    Handing a short call (ECDH on SoftHSM2: about 0.15 ms) to a thread on the
    event loop's CPU saves a cross-CPU wake-up, a sizeable part of what the
    hand-over costs.  A long call (storing a key on SoftHSM2: milliseconds of
    file work, or a lookup after another process's write) gains nothing from
    that, and with every lane thread on one CPU such calls queue there while
    the other CPU idles: derive-and-store at c=16 fell from 2.1 to 1.5-1.8 of
    the raw loop with every thread kept (partial ``make bench`` runs,
    ``gw-hem-derive``).  So each lane thread follows the running average of
    its own calls, with hysteresis.
    """

    SPREAD_ABOVE: Final = 0.001  # seconds, average call time
    KEEP_BELOW: Final = 0.0005
    WEIGHT: Final = 0.1  # of the newest call in the average (about the last 10 calls)

    def __init__(self) -> None:
        self.home = os.sched_getaffinity(0)
        self.average = 0.0
        self.spread = False

    def took(self, seconds: float) -> None:
        self.average += (seconds - self.average) * self.WEIGHT
        if not self.spread and self.average > self.SPREAD_ABOVE:
            self.spread = True
            spread_out()
        elif self.spread and self.average < self.KEEP_BELOW:
            self.spread = False
            _set_cpus(self.home)


class Lane:
    """``threads`` worker threads taking blocking calls in arrival order (``spread``: on every
    CPU the process may use, see :func:`spread_out`)."""

    def __init__(self, threads: int, name: str, *, spread: bool = False) -> None:
        self._spread = spread
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._answers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Answers] = weakref.WeakKeyDictionary()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``call``; the returned future (of the running loop) gets its result."""
        if self._closed:
            raise RuntimeError("the lane is closed")
        loop = asyncio.get_running_loop()
        answers = self._answers.get(loop)
        if answers is None:
            answers = self._answers[loop] = _Answers(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((call, future, answers))
        return future

    def _work(self) -> None:
        _mildly_disfavoured()
        if self._spread:
            spread_out()
        placement = _Placement() if _spread_cpus is not None and not self._spread else None
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            call, future, answers = job
            if future.done():  # cancelled while queued: never start it
                continue
            started = time.perf_counter() if placement is not None else 0.0
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - the caller gets it
                answers.put(future, None, exc)
            else:
                answers.put(future, result, None)
            if placement is not None:
                placement.took(time.perf_counter() - started)

    def close(self) -> None:
        """Cancel the calls still queued, let running ones finish, stop the threads."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except Empty:
                break
            if job is not _STOP:
                _, future, answers = job
                answers.put(future, None, asyncio.CancelledError())
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
