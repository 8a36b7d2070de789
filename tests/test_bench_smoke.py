"""`make bench` smoke test: a --quick run in a child process writes the ratios.

The benchmark creates its own tokens in a temporary folder and loads the
modules in its own processes, so it cannot disturb this session's tokens.
Nothing here asserts a speed: only that every figure the report promises is
present and sane.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench-out"
    # The adapter-level cases; the gateway-level ones have their own smoke test (test_bench_gateway_smoke.py).
    args = [sys.executable, "-m", "bench", "--quick", "--seconds", "0.1", "--only",
            "derive-and-store,derive-session,lookup", "--out", str(out)]
    with_chart = importlib.util.find_spec("matplotlib") is not None  # only the bench extra installs it
    if not with_chart:
        args.append("--no-chart")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "adapter/raw" in proc.stdout

    data = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    derive = {(d["token"], d["case"]): d for d in data["derive"]}
    assert set(derive) == {(t, c) for t in ("softhsm", "nss") for c in ("derive-and-store", "derive-session")}, \
        data["skipped"]
    for key, d in derive.items():
        assert set(d["ratios"]) == {"1", "2", "4"}, key
        assert all(r is not None and math.isfinite(r) and r > 0 for r in d["ratios"].values()), (key, d["ratios"])
        assert d["raw"]["median"]["ops"] > 0 and d["floor"]["median"]["ops"] > 0, key

    lookup = data["lookup"]
    low, high = lookup["levels"]
    assert low < high and lookup["create"]["keys"] == high - low
    names = {op["name"]: op for op in lookup["ops"]}
    for name in ("adapter get_key", "raw get_key", "adapter aes-gcm", "raw get_key + aes-gcm"):
        op = names[name]
        assert set(op["at"]) == {str(low), str(high)}, name
        assert op["growth"] is not None and op["growth"] > 0, name

    md = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "ratio vs raw" in md and f"{high:,} keys" in md
    assert (out / "benchmarks.png").is_file() == with_chart
