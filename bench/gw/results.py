"""What the gateway-level benchmark produces: typed results and their JSON form."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.gw.wrk import WrkResult
from bench.results import median_sample
from bench.timing import Sample


def median_run(runs: list[WrkResult]) -> WrkResult:
    """The run with the median throughput (its latencies stay consistent with it)."""
    ordered = sorted(runs, key=lambda r: r.ops_per_s)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class GatewayCase:
    """One API call through ``gateway serve --workers 2`` at several concurrencies, against the raw
    single-process loop doing the same token work, round by round (ratios taken within a round)."""

    name: str
    token: str
    route: str
    what: str
    raw_what: str
    raw: list[Sample] = field(default_factory=list)
    gateway: dict[int, list[WrkResult]] = field(default_factory=dict)
    # The bare HTTPS server (bench/gw/bare.py) doing the same token call, by concurrency (ECDH only).
    bare: dict[int, list[WrkResult]] = field(default_factory=dict)

    def ratio_rounds(self, concurrency: int) -> list[float]:
        return [g.ops_per_s / r.ops_per_s for g, r in zip(self.gateway.get(concurrency, []), self.raw)
                if r.ops_per_s > 0]

    def bare_ratio(self, concurrency: int) -> float:
        """Bare server over the raw loop, median of the rounds."""
        rounds = [b.ops_per_s / r.ops_per_s for b, r in zip(self.bare.get(concurrency, []), self.raw) if r.ops_per_s > 0]
        return statistics.median(rounds) if rounds else float("nan")

    def gateway_over_bare(self, concurrency: int) -> float:
        """Gateway over the bare server, median of the rounds."""
        rounds = [g.ops_per_s / b.ops_per_s for g, b in zip(self.gateway.get(concurrency, []),
                                                             self.bare.get(concurrency, [])) if b.ops_per_s > 0]
        return statistics.median(rounds) if rounds else float("nan")

    def ratio(self, concurrency: int) -> float:
        rounds = self.ratio_rounds(concurrency)
        return statistics.median(rounds) if rounds else float("nan")

    def ratio_range(self, concurrency: int) -> tuple[float, float]:
        rounds = self.ratio_rounds(concurrency)
        return (min(rounds), max(rounds)) if rounds else (float("nan"), float("nan"))

    def tail(self, concurrency: int) -> float:
        """p99 / p50 of the median run at ``concurrency``."""
        runs = self.gateway.get(concurrency)
        if not runs:
            return float("nan")
        run = median_run(runs)
        return run.p99_ms / run.p50_ms if run.p50_ms > 0 else float("nan")

    def failed(self) -> int:
        return sum(r.failed for runs in (*self.gateway.values(), *self.bare.values()) for r in runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "token": self.token, "route": self.route, "what": self.what, "raw_what": self.raw_what,
            "raw": {"median": median_sample(self.raw).to_dict() if self.raw else None,
                    "rounds": [s.to_dict() for s in self.raw]},
            "gateway": {str(c): {"median": median_run(runs).to_dict(), "rounds": [r.to_dict() for r in runs]}
                        for c, runs in sorted(self.gateway.items())},
            "ratios": {str(c): self.ratio(c) for c in sorted(self.gateway)},
            "ratio_rounds": {str(c): self.ratio_rounds(c) for c in sorted(self.gateway)},
            "p99_over_p50": {str(c): self.tail(c) for c in sorted(self.gateway)},
            "failed_requests": self.failed(),
            "bare": {str(c): {"median": median_run(runs).to_dict(), "rounds": [r.to_dict() for r in runs],
                              "ratio_vs_raw": self.bare_ratio(c), "gateway_over_bare": self.gateway_over_bare(c)}
                     for c, runs in sorted(self.bare.items()) if runs},
        }


@dataclass
class ScaleResult:
    """HEM derive through the gateway with few and with many key objects in the token, with the
    benchmark's worker count and with one worker (which shows what the second process costs)."""

    token: str
    concurrency: int
    levels: tuple[int, int]
    workers: tuple[int, ...]
    # workers -> level -> windows; objects: the key objects in the token when each window started
    gateway: dict[int, dict[int, list[WrkResult]]] = field(default_factory=dict)
    objects: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    raw: dict[int, list[Sample]] = field(default_factory=dict)
    created: int = 0
    create_seconds: float = 0.0
    # level -> (ms of one attribute read in the raw process right after another process stored a key,
    #           ms of the same read with no change in between); medians
    reread_ms: dict[int, tuple[float, float]] = field(default_factory=dict)

    def rate(self, level: int, workers: int | None = None) -> float:
        runs = self.gateway.get(self.workers[0] if workers is None else workers, {}).get(level, [])
        return statistics.median([r.ops_per_s for r in runs]) if runs else float("nan")

    def raw_rate(self, level: int) -> float:
        runs = self.raw.get(level, [])
        return statistics.median([r.ops_per_s for r in runs]) if runs else float("nan")

    def ratio(self, workers: int | None = None) -> float:
        """Derive rate with many keys over the rate with few."""
        low, high = self.levels
        return self.rate(high, workers) / self.rate(low, workers)

    def raw_ratio(self) -> float:
        low, high = self.levels
        return self.raw_rate(high) / self.raw_rate(low)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token, "concurrency": self.concurrency, "levels": list(self.levels),
            "workers": list(self.workers),
            "gateway": {str(w): {str(lvl): [r.to_dict() for r in runs] for lvl, runs in sorted(by.items())}
                        for w, by in self.gateway.items()},
            "objects": {str(w): {str(lvl): counts for lvl, counts in sorted(by.items())}
                        for w, by in self.objects.items()},
            "raw": {str(lvl): [s.to_dict() for s in runs] for lvl, runs in sorted(self.raw.items())},
            "rates": {str(w): {str(lvl): self.rate(lvl, w) for lvl in self.levels} for w in self.workers},
            "raw_rates": {str(lvl): self.raw_rate(lvl) for lvl in self.levels},
            "ratios": {str(w): self.ratio(w) for w in self.workers}, "raw_ratio": self.raw_ratio(),
            "create": {"keys": self.created, "seconds": self.create_seconds,
                       "per_s": self.created / self.create_seconds if self.create_seconds else None},
            "reread_ms": {str(lvl): {"after_other_process_wrote": a, "unchanged": b}
                          for lvl, (a, b) in sorted(self.reread_ms.items())},
        }


@dataclass(frozen=True)
class WorkerMemory:
    pid: int
    requests: int  # requests this worker answered since the gateway started
    rss_kib: int


@dataclass
class MemoryResult:
    """RSS of each worker of a fresh gateway after N requests in total."""

    request: str
    concurrency: int
    # checkpoint (requests asked for) -> the workers then; served: the requests actually answered by then
    checkpoints: dict[int, list[WorkerMemory]] = field(default_factory=dict)
    served: dict[int, int] = field(default_factory=dict)

    def growth(self) -> float:
        """Summed RSS at the last checkpoint over the first (1.0: flat)."""
        if len(self.checkpoints) < 2:
            return float("nan")
        first, last = min(self.checkpoints), max(self.checkpoints)
        a = sum(w.rss_kib for w in self.checkpoints[first])
        b = sum(w.rss_kib for w in self.checkpoints[last])
        return b / a if a else float("nan")

    def worker_growth(self) -> dict[int, float]:
        """Per worker (by pid): RSS at the last checkpoint over the first."""
        if len(self.checkpoints) < 2:
            return {}
        first = {w.pid: w.rss_kib for w in self.checkpoints[min(self.checkpoints)]}
        last = {w.pid: w.rss_kib for w in self.checkpoints[max(self.checkpoints)]}
        return {pid: last[pid] / first[pid] for pid in first if pid in last and first[pid]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request, "concurrency": self.concurrency,
            "checkpoints": {str(n): [w.__dict__ for w in ws] for n, ws in sorted(self.checkpoints.items())},
            "served": {str(n): s for n, s in sorted(self.served.items())},
            "growth": self.growth(), "worker_growth": {str(k): v for k, v in self.worker_growth().items()},
        }


# Suffix of the ``GatewayRun.cpu`` keys that count the main (event-loop) threads only.
LOOP_THREAD = ":loop"


@dataclass
class GatewayRun:
    workers: int
    sessions: int
    log_level: str
    cases: list[GatewayCase] = field(default_factory=list)
    scale: ScaleResult | None = None
    memory: MemoryResult | None = None
    # case@concurrency[-bare][:loop] -> CPU milliseconds per request, all threads or the event loop's
    cpu: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def case(self, name: str) -> GatewayCase | None:
        return next((c for c in self.cases if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers, "sessions": self.sessions, "log_level": self.log_level,
            "cases": [c.to_dict() for c in self.cases],
            "scale": self.scale.to_dict() if self.scale else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "cpu_ms_per_request": self.cpu,
            "skipped": self.skipped,
        }
