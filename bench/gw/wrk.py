"""The load generator: Debian's ``wrk`` with a Lua script per case.

wrk is written in C (epoll, one event loop per thread), keeps its HTTPS
connections alive, and holds exactly ``-c`` requests in flight: each
connection sends its next request when the previous answer arrived.  The
script sets the method, the JSON body and the Authorization header, and its
``done`` hook prints one JSON line with the counts and the latency
percentiles (microseconds) that wrk recorded for every request.

``-t 2`` as asked, except at concurrency 1, where wrk needs at least one
connection per thread (``-t 1``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WRK_TIMEOUT_SECONDS = 30  # per request; a slower answer counts as a timeout error

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK-JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]" if "]==]" not in text else json.dumps(text)


def script(method: str, body: Any | None, bearer: str | None) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(json.dumps(body, separators=(',', ':')))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if bearer:
        lines.append(f'wrk.headers["Authorization"] = {_lua_string("Bearer " + bearer)}')
    return "\n".join(lines) + "\n" + _DONE


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput over the window and the latency of every request."""

    concurrency: int
    threads: int
    requests: int
    seconds: float
    ops_per_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WrkResult":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class WrkError(RuntimeError):
    pass


def available() -> str | None:
    return shutil.which("wrk")


def run(url: str, *, method: str, body: Any | None, bearer: str | None, concurrency: int, seconds: float,
        workdir: Path, name: str) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` (whole seconds, at least 1) with ``concurrency`` connections."""
    exe = available()
    if exe is None:
        raise WrkError("wrk is not installed (apt-get install wrk; `make bench` does)")
    threads = 1 if concurrency < 2 else 2
    lua = workdir / f"wrk-{name}.lua"
    lua.write_text(script(method, body, bearer), encoding="utf-8")
    argv = [exe, "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
            "--timeout", f"{WRK_TIMEOUT_SECONDS}s", "-s", str(lua), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_SECONDS + 60,
                          check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK-JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise WrkError(f"wrk failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    data = json.loads(line[len("WRK-JSON "):])
    secs = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    return WrkResult(
        concurrency=concurrency, threads=threads, requests=data["requests"], seconds=round(secs, 3),
        ops_per_s=(data["requests"] - data["status"]) / secs if secs > 0 else 0.0, errors=errors,
        p50_ms=data["p50_us"] / 1e3, p90_ms=data["p90_us"] / 1e3, p99_ms=data["p99_us"] / 1e3,
        mean_ms=data["mean_us"] / 1e3, max_ms=data["max_us"] / 1e3,
    )
