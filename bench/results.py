"""What one benchmark run produces: typed results, and their JSON form."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.timing import Sample


def median_sample(samples: list[Sample]) -> Sample:
    """The round with the median throughput (its latencies stay consistent with it)."""
    ordered = sorted(samples, key=lambda s: s.ops_per_s)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class DeriveResult:
    """One derive case on one token: raw single-thread vs the adapter at several thread counts.

    Each round measures every variant back to back; a ratio is taken within a
    round (so both sides saw the same machine load), and the median over
    rounds is reported.
    """

    token: str
    case: str
    raw: list[Sample] = field(default_factory=list)
    adapter: dict[int, list[Sample]] = field(default_factory=dict)
    # The same token calls as the raw loop in bare ctypes, in the raw process: the token's own speed.
    floor: list[Sample] = field(default_factory=list)

    def ratio_rounds(self, threads: int) -> list[float]:
        return [a.ops_per_s / r.ops_per_s for a, r in zip(self.adapter[threads], self.raw) if r.ops_per_s > 0]

    def added_us(self) -> float:
        """Median latency the adapter adds to one op at 1 thread, in microseconds.

        From the p50s of each round (medians shrug off the bursts of a shared
        machine better than throughput does), then the median over rounds.
        """
        rounds = [(a.p50_ms - r.p50_ms) * 1e3 for a, r in zip(self.adapter.get(1, []), self.raw)]
        return statistics.median(rounds) if rounds else float("nan")

    def ratio_range(self, threads: int) -> tuple[float, float]:
        rounds = self.ratio_rounds(threads)
        return (min(rounds), max(rounds)) if rounds else (float("nan"), float("nan"))

    def floor_ratio(self) -> float:
        rounds = [f.ops_per_s / r.ops_per_s for f, r in zip(self.floor, self.raw) if r.ops_per_s > 0]
        return statistics.median(rounds) if rounds else float("nan")

    def ratio(self, threads: int) -> float:
        rounds = self.ratio_rounds(threads)
        return statistics.median(rounds) if rounds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "case": self.case,
            "raw": {"median": median_sample(self.raw).to_dict(), "rounds": [s.to_dict() for s in self.raw]},
            "adapter": {
                str(t): {"median": median_sample(s).to_dict(), "rounds": [x.to_dict() for x in s]}
                for t, s in sorted(self.adapter.items())
            },
            "floor": {"median": median_sample(self.floor).to_dict(), "rounds": [s.to_dict() for s in self.floor],
                      "ratio": self.floor_ratio()} if self.floor else None,
            "ratios": {str(t): self.ratio(t) for t in sorted(self.adapter)},
            "ratio_rounds": {str(t): self.ratio_rounds(t) for t in sorted(self.adapter)},
            "adapter_added_us_1_thread": self.added_us(),
        }


@dataclass
class LookupOp:
    """One lookup-type operation measured at each stored-key count."""

    name: str
    runner: str  # "adapter" or "raw"
    what: str
    at: dict[int, Sample] = field(default_factory=dict)

    def growth(self, low: int, high: int) -> float:
        """Per-op cost at ``high`` keys over the cost at ``low`` keys (1.0: flat)."""
        if low not in self.at or high not in self.at:
            return float("nan")
        return self.at[high].mean_ms / self.at[low].mean_ms

    def to_dict(self, low: int, high: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "runner": self.runner,
            "what": self.what,
            "at": {str(n): s.to_dict() for n, s in sorted(self.at.items())},
            "growth": self.growth(low, high),
        }


@dataclass
class LookupResult:
    token: str
    levels: tuple[int, int]
    ops: list[LookupOp] = field(default_factory=list)
    created: int = 0
    create_seconds: float = 0.0
    create_threads: int = 4

    def op(self, name: str) -> LookupOp:
        return next(o for o in self.ops if o.name == name)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.levels
        return {
            "token": self.token,
            "levels": list(self.levels),
            "create": {
                "keys": self.created,
                "seconds": self.create_seconds,
                "per_s": self.created / self.create_seconds if self.create_seconds else None,
                "threads": self.create_threads,
            },
            "ops": [o.to_dict(low, high) for o in self.ops],
        }
