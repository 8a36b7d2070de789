"""The gateway benchmark's report: a target met only by the median round still shows the analysis."""

from __future__ import annotations

from bench.gw.cases import HEM_ECDH
from bench.gw.report import Target, targets, why_missed
from bench.gw.results import GatewayCase, GatewayRun
from bench.gw.wrk import WrkResult
from bench.timing import Sample


def _raw(ops_per_s: float) -> Sample:
    return Sample(ops=int(ops_per_s * 5), seconds=5.0, threads=1, ops_per_s=ops_per_s, mean_ms=0.27, p50_ms=0.26,
                  p99_ms=0.4)


def _wrk(ops_per_s: float) -> WrkResult:
    return WrkResult(concurrency=16, threads=2, requests=int(ops_per_s * 5), seconds=5.0, ops_per_s=ops_per_s,
                     errors={}, p50_ms=4.0, p90_ms=6.0, p99_ms=8.0, mean_ms=4.2, max_ms=20.0)


def _run(ratios: list[float]) -> GatewayRun:
    case = GatewayCase(HEM_ECDH, "softhsm", "POST /api/crypto/ecdh", "HEM ECDH", "derive, read, destroy",
                       raw=[_raw(3700.0) for _ in ratios], gateway={16: [_wrk(3700.0 * r) for r in ratios]})
    return GatewayRun(workers=2, sessions=4, log_level="info", cases=[case], cpu={f"{HEM_ECDH}@16": 0.46})


def _ecdh_met(ts: list[Target]) -> bool:
    (met,) = [t.met for t in ts if t.what.startswith("/api/crypto/ecdh")]
    return met


def test_a_median_round_above_the_line_with_a_round_below_shows_the_analysis() -> None:
    run = _run([1.10, 1.06, 0.90])
    ts = targets(run)
    assert _ecdh_met(ts) is True
    text = "\n".join(why_missed(run, ts))
    assert "met in this run, at the noise line" in text
    assert "rounds ranged 0.90-1.10" in text
    assert "Where the rest goes" in text


def test_every_round_above_the_line_needs_no_analysis() -> None:
    run = _run([1.20, 1.25, 1.30])
    assert why_missed(run, targets(run)) == []


def test_a_missed_target_shows_the_analysis_without_the_met_note() -> None:
    run = _run([0.85, 0.91, 0.95])
    ts = targets(run)
    assert _ecdh_met(ts) is False
    text = "\n".join(why_missed(run, ts))
    assert "**ECDH at c=16.**" in text and "noise line" not in text
