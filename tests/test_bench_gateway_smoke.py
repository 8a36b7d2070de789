"""`make bench` gateway-level smoke test: a tiny run of the gateway cases in a child process.

A real `gateway serve --workers 2` on fresh tokens, driven by wrk, against the raw loop.
Nothing here asserts a speed: only that every figure the report promises is present and
sane, and that no request through the gateway failed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_quick_gateway_bench_writes_every_figure(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (`make install` installs it)")
    out = tmp_path / "bench-out"
    args = [sys.executable, "-m", "bench", "--quick", "--only", "gw-hem-derive,gw-hem-ecdh,gw-vault-derive,gw-memory",
            "--concurrency", "4", "--gw-seconds", "1", "--memory-requests", "300,900", "--no-chart", "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Through the gateway" in proc.stdout

    gateway = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))["gateway"]
    cases = {c["name"]: c for c in gateway["cases"]}
    assert set(cases) == {"gw-hem-derive", "gw-hem-ecdh", "gw-vault-derive"}, gateway["skipped"]
    for name, case in cases.items():
        assert case["failed_requests"] == 0, (name, case)
        assert case["raw"]["median"]["ops"] > 0, name
        run = case["gateway"]["4"]["median"]
        assert run["requests"] > 0 and run["p50_ms"] > 0 and run["p99_ms"] >= run["p50_ms"], (name, run)
        ratio = case["ratios"]["4"]
        assert ratio is not None and math.isfinite(ratio) and ratio > 0, (name, ratio)
        cpu = gateway["cpu_ms_per_request"]
        assert cpu[f"{name}@4"] > 0, name
        # the event loop's share (clock ticks, read a moment apart from the whole)
        assert 0 < cpu[f"{name}@4:loop"] <= cpu[f"{name}@4"] * 1.1, (name, cpu)

    # the bare HTTPS server of the ECDH case, the same token call without the gateway around it
    bare = cases["gw-hem-ecdh"]["bare"]["4"]
    assert bare["median"]["requests"] > 0 and bare["ratio_vs_raw"] > 0 and bare["gateway_over_bare"] > 0, bare
    assert gateway["cpu_ms_per_request"]["gw-hem-ecdh@4-bare"] > 0
    assert gateway["cpu_ms_per_request"]["gw-hem-ecdh@4-bare:loop"] > 0

    memory = gateway["memory"]
    assert set(memory["checkpoints"]) == {"300", "900"}
    for checkpoint, workers in memory["checkpoints"].items():
        assert len(workers) == 2 and all(w["rss_kib"] > 0 and w["requests"] > 0 for w in workers), workers
        assert memory["served"][checkpoint] >= int(checkpoint)

    md = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "Through the gateway" in md and "Worker memory" in md


def test_quick_scale_bench_writes_rates_and_the_reread_cost(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (`make install` installs it)")
    out = tmp_path / "bench-out"
    args = [sys.executable, "-m", "bench", "--quick", "--only", "gw-scale", "--tokens", "softhsm",
            "--scale-keys", "10,60", "--gw-seconds", "1", "--no-chart", "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "one attribute read in another process right after a key was stored" in proc.stdout

    scale = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))["gateway"]["scale"]
    assert scale["levels"] == [10, 60]
    for workers, rates in scale["rates"].items():
        assert all(rates[level] > 0 for level in ("10", "60")), (workers, rates)
    assert set(scale["reread_ms"]) == {"10", "60"}
    for level, reread in scale["reread_ms"].items():
        assert reread["after_other_process_wrote"] > 0 and reread["unchanged"] > 0, (level, reread)
    md = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "What a second process storing keys costs, and why one worker stores for both" in md
