"""Timed loops and their statistics, shared by the adapter side and the raw worker.

No gateway or pkcs11 import here: the raw worker process must not load the
adapter.  Every loop is bounded by wall time (and optionally an op count) so
slow and fast operations cost the same share of the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Sample:
    """One measured loop: throughput over the whole window plus per-op latencies."""

    ops: int
    seconds: float
    threads: int
    ops_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sample":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies: list[float], wall: float, threads: int) -> Sample:
    lat = sorted(latencies)
    n = len(lat)
    return Sample(
        ops=n,
        seconds=round(wall, 4),
        threads=threads,
        ops_per_s=n / wall if wall > 0 else 0.0,
        mean_ms=(sum(lat) / n * 1e3) if n else float("nan"),
        p50_ms=percentile(lat, 50) * 1e3,
        p99_ms=percentile(lat, 99) * 1e3,
    )


def timed_loop(
    op: Callable[[int], object],
    *,
    threads: int = 1,
    seconds: float,
    warmup: int = 3,
    max_ops: int | None = None,
    min_ops: int = 1,
) -> Sample:
    """Call ``op(worker_index)`` from ``threads`` threads until ``seconds`` have passed.

    Each worker first runs ``warmup`` uncounted calls (caches, first-use
    scans, page faults), then all start together.  ``max_ops`` caps the total
    (for very slow ops); ``min_ops`` is reached even if the window is over.
    """
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    counted = [0]
    lock = threading.Lock()
    deadline = [0.0]
    started = [0.0]

    def open_window() -> None:
        # Runs once, when every worker has warmed up, before any is released.
        started[0] = time.perf_counter()
        deadline[0] = started[0] + seconds

    start_gate = threading.Barrier(threads + 1, action=open_window)

    def take() -> bool:
        """Claim one op of the budget; False when the window or the cap is used up."""
        with lock:
            if max_ops is not None and counted[0] >= max_ops:
                return False
            if counted[0] >= min_ops and time.perf_counter() >= deadline[0]:
                return False
            counted[0] += 1
            return True

    def worker(index: int) -> None:
        try:
            for _ in range(warmup):
                op(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        try:
            start_gate.wait()
        except threading.BrokenBarrierError:
            return
        mine = latencies[index]
        try:
            while not errors and take():
                t0 = time.perf_counter()
                op(index)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    if threads == 1:
        # No thread switch in the single-thread case: the raw loop runs the same way.
        for _ in range(warmup):
            op(0)
        open_window()
        mine = latencies[0]
        while take():
            t0 = time.perf_counter()
            op(0)
            mine.append(time.perf_counter() - t0)
        return summarize(mine, time.perf_counter() - started[0], 1)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        start_gate.wait(timeout=600)
    except threading.BrokenBarrierError:
        pass
    for t in pool:
        t.join()
    wall = time.perf_counter() - started[0]
    if errors:
        raise errors[0]
    return summarize([x for chunk in latencies for x in chunk], wall, threads)
