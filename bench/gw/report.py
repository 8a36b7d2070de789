"""The gateway-level part of the printed tables, docs/benchmarks.md and the chart."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.gw.cases import HEM_DERIVE, HEM_ECDH
from bench.gw.results import LOOP_THREAD, GatewayRun, median_run
from bench.results import median_sample


def _num(x: float, digits: int = 1) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _ms(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


CASE_HEADER = ["case", "token", "runner", "concurrency", "ops/s", "p50 ms", "p99 ms", "p99/p50", "ratio vs raw",
               "rounds", "CPU ms/req"]


def case_rows(run: GatewayRun) -> list[list[str]]:
    rows = []
    for case in run.cases:
        if case.raw:
            raw = median_sample(case.raw)
            rows.append([case.name, case.token, "raw loop", "1", _num(raw.ops_per_s), _ms(raw.p50_ms), _ms(raw.p99_ms),
                         _num(raw.p99_ms / raw.p50_ms, 1), "1.00", "", ""])
        for c, runs in sorted(case.gateway.items()):
            if not runs:
                continue
            m = median_run(runs)
            lo, hi = case.ratio_range(c)
            cpu = run.cpu.get(f"{case.name}@{c}", float("nan"))
            rows.append([case.name, case.token, "gateway", str(c), _num(m.ops_per_s), _ms(m.p50_ms), _ms(m.p99_ms),
                         _num(case.tail(c), 1), f"{case.ratio(c):.2f}", f"{lo:.2f}-{hi:.2f}", _num(cpu, 2)])
        for c, runs in sorted(case.bare.items()):
            if not runs:
                continue
            m = median_run(runs)
            cpu = run.cpu.get(f"{case.name}@{c}-bare", float("nan"))
            rows.append([case.name, case.token, "bare HTTPS server", str(c), _num(m.ops_per_s), _ms(m.p50_ms),
                         _ms(m.p99_ms), _num(m.p99_ms / m.p50_ms if m.p50_ms else float("nan"), 1),
                         f"{case.bare_ratio(c):.2f}", "", _num(cpu, 2)])
    return rows


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    measured: float
    met: bool
    detail: str

    def line(self) -> str:
        state = "met" if self.met else "MISSED"
        return f"{self.what}: {self.detail} (target {self.goal}) - {state}"


ECDH_TARGET = 1.0  # /api/crypto/ecdh at c=16, against the raw single-process loop


def targets(run: GatewayRun) -> list[Target]:
    """Issue 6's targets with the measured figures of this run."""
    out: list[Target] = []
    derive, ecdh = run.case(HEM_DERIVE), run.case(HEM_ECDH)
    if derive is not None and 16 in derive.gateway:
        r = derive.ratio(16)
        out.append(Target("derive-and-store through the gateway at c=16", ">= 0.90 of the raw loop", r, r >= 0.9,
                          f"{r:.2f} of the raw loop ({_num(median_run(derive.gateway[16]).ops_per_s)} vs "
                          f"{_num(median_sample(derive.raw).ops_per_s)} ops/s)"))
    if ecdh is not None and 16 in ecdh.gateway:
        r = ecdh.ratio(16)
        out.append(Target("/api/crypto/ecdh at c=16", f">= {ECDH_TARGET:.2f} of the raw single-process loop", r,
                          r >= ECDH_TARGET,
                          f"{r:.2f} of the raw loop ({_num(median_run(ecdh.gateway[16]).ops_per_s)} vs "
                          f"{_num(median_sample(ecdh.raw).ops_per_s)} ops/s)"))
    if run.scale is not None:
        s = run.scale
        r = s.ratio()
        low, high = s.levels
        others = "; ".join(f"{w} worker{'s' if w > 1 else ''} {s.ratio(w):.2f}" for w in s.workers[1:])
        out.append(Target(f"HEM derive with {high:,} keys vs {low:,} keys ({s.workers[0]} workers)", ">= 0.90", r,
                          r >= 0.9, f"{r:.2f} ({_num(s.rate(high))} vs {_num(s.rate(low))} ops/s at "
                                    f"c={s.concurrency}; {others + '; ' if others else ''}raw loop {s.raw_ratio():.2f})"))
    for case in run.cases:
        if 16 in case.gateway:
            t = case.tail(16)
            m = median_run(case.gateway[16])
            raw = ", ".join(f"{s.p99_ms / s.p50_ms:.1f}" for s in case.raw if s.p50_ms > 0)
            out.append(Target(f"{case.name} p99/p50 at c=16", "<= 5", t, t <= 5.0,
                              f"{t:.1f} (p50 {_ms(m.p50_ms)} ms, p99 {_ms(m.p99_ms)} ms; the raw loop's own p99/p50 "
                              f"by round: {raw})"))
    if run.memory is not None and len(run.memory.checkpoints) >= 2:
        growth = run.memory.worker_growth()
        worst = max(growth.values()) if growth else float("nan")
        first, last = min(run.memory.checkpoints), max(run.memory.checkpoints)
        first, last = run.memory.served.get(first, first), run.memory.served.get(last, last)
        out.append(Target(f"worker RSS after {last:,} vs {first:,} requests", "<= 1.10", worst, worst <= 1.10,
                          "; ".join(f"pid {pid} x{g:.3f}" for pid, g in growth.items())))
    return out


def headline(run: GatewayRun) -> list[str]:
    lines = [t.line() for t in targets(run)]
    failed = sum(c.failed() for c in run.cases)
    if failed:
        lines.append(f"{failed} gateway requests failed (see the JSON)")
    return lines + [f"skipped: {s}" for s in run.skipped]


def print_gateway(run: GatewayRun, text_table: Any) -> None:
    if run.cases:
        print(f"\nThrough the gateway (serve --workers {run.workers}, wrk over HTTPS; ratio = gateway / raw "
              "single-process loop, same round)")
        print(text_table(CASE_HEADER, case_rows(run)))
    if run.scale is not None:
        s = run.scale
        low, high = s.levels
        print(f"\nHEM derive at c={s.concurrency} with {low:,} and {high:,} key objects:")
        for w in s.workers:
            print(f"  gateway, {w} worker{'s' if w > 1 else ''}: {_num(s.rate(low, w))} and {_num(s.rate(high, w))} "
                  f"ops/s (x{s.ratio(w):.2f})")
        print(f"  raw loop: {_num(s.raw_rate(low))} and {_num(s.raw_rate(high))} ops/s (x{s.raw_ratio():.2f})")
        if s.reread_ms:
            print("  one attribute read in another process right after a key was stored: " + ", ".join(
                f"{a:.1f} ms at {lvl:,} keys (unchanged token {b:.2f} ms)" for lvl, (a, b) in sorted(s.reread_ms.items())))
    if run.memory is not None:
        print(f"\nWorker RSS ({run.memory.request}, c={run.memory.concurrency}):")
        for target, workers in sorted(run.memory.checkpoints.items()):
            total = run.memory.served.get(target, target)
            print(f"  after {total:,} requests: " + ", ".join(
                f"pid {w.pid}: {w.requests:,} requests, {w.rss_kib / 1024:.1f} MiB" for w in workers))


def markdown(run: GatewayRun, md_table: Any) -> list[str]:
    parts = [
        "## Through the gateway: `gateway serve --workers 2` under wrk, against the raw loop",
        "",
        f"`gateway serve --workers {run.workers}` (sessions = {run.sessions} per worker and token, logging level "
        f"`{run.log_level}` with JSON access logs, HEM audit trail on, default `server.cpu_affinity`: with as many",
        "workers as CPUs each keeps to one, see docs/operations.md) on a fresh SoftHSM2 token and a fresh NSS",
        "database, driven by Debian's `wrk` over HTTPS (keep-alive connections; `-t 2`, `-t 1` at concurrency 1)",
        "with a Lua script for the method, body and bearer token. The raw loop is a single-threaded",
        "python-pkcs11 process doing the minimum token work for the same result, on the same token, in the",
        "same round, after 3 uncounted calls; the gateway (and the bare server) first get one uncounted 3 s wrk",
        "window per case, for what a fresh process does only once (handle caches, the ECDH base key's session",
        "copy). The ratio is the median of the per-round ratios; \"rounds\" is their range; ops/s and",
        "latencies are from the round with the median throughput (wrk's per-request latencies). CPU ms/req",
        "is the CPU time of both workers (all threads, the token module's work included) per answered request.",
        "",
        md_table(CASE_HEADER, case_rows(run)),
        "",
    ]
    for case in run.cases:
        parts.append(f"- **{case.name}** (`{case.route}` on {case.token}): {case.what}. Raw loop: {case.raw_what}.")
    parts.append("")
    ts = targets(run)
    if ts:
        parts += ["### Targets", "", "| target | goal | measured | |", "|---|---|---|---|"]
        parts += [f"| {t.what} | {t.goal} | {t.detail} | {'met' if t.met else '**missed**'} |" for t in ts]
        parts.append("")
        parts += why_missed(run, ts)
    if run.scale is not None:
        s = run.scale
        low, high = s.levels
        per_s = s.created / s.create_seconds if s.create_seconds else float("nan")
        parts += [
            f"### HEM derive with {low:,} and {high:,} stored keys",
            "",
            f"The same derive at c={s.concurrency}, first with about {low:,} key objects in the token, then with {high:,} or",
            f"more ({s.created:,} AES-256 keys with HEM metadata labels added through the adapter at {per_s:,.0f} keys/s),",
            "each with " + " and with ".join(f"{w} worker{'s' if w > 1 else ''}" for w in s.workers) + ", and the raw loop.",
            "Keys derived at the low level are removed after each window; at the high level they stay (removing",
            "them costs SoftHSM2 a directory re-listing per object), so the count grows from window to window.",
            "",
            "| runner | key objects at window start | ops/s (median) | windows |",
            "|---|---|---:|---|",
        ]
        for w in s.workers:
            for level in s.levels:
                counts = ", ".join(f"{c:,}" for c in s.objects.get(w, {}).get(level, []))
                windows = ", ".join(_num(r.ops_per_s) for r in s.gateway.get(w, {}).get(level, []))
                parts.append(f"| gateway, {w} worker{'s' if w > 1 else ''} | {counts} | {_num(s.rate(level, w))} | {windows} |")
        for level in s.levels:
            windows = ", ".join(_num(r.ops_per_s) for r in s.raw.get(level, []))
            parts.append(f"| raw loop (1 process) | ~{level:,} | {_num(s.raw_rate(level))} | {windows} |")
        parts += ["", f"Ratio {high:,}/{low:,}: " + ", ".join(
            f"gateway with {w} worker{'s' if w > 1 else ''} {s.ratio(w):.2f}" for w in s.workers)
            + f", raw loop {s.raw_ratio():.2f}.", "",
            "The windows of one level run back to back and the machine's load changes between them, so a",
            "ratio moves from run to run (on 2026-12-03, with both workers storing keys themselves, from 0.49 to",
            "1.15); the windows column shows the spread within a run.",
            "What a second process storing keys costs, and why one worker stores for both: SoftHSM2 re-reads its",
            "whole token folder (lists it and stats every file, two per object) the first time a process touches",
            "a token object after another process changed the token. So one gateway process per token makes every",
            "object change and the others send theirs to it (`gateway/token/writerelay.py`; before, with both",
            "workers storing, the ratio with 2 workers was 0.75 against 1.45 with 1 worker). Measured in this",
            "run (the raw process reads one attribute of a key whose handle it holds, right after the benchmark",
            "process stored one key; medians of 5): " + "; ".join(
                f"{a:.1f} ms with about {lvl:,} keys (the same read with the token unchanged: {b:.2f} ms)"
                for lvl, (a, b) in sorted(s.reread_ms.items())) + ".",
            ""]
    if run.memory is not None:
        m = run.memory
        parts += [
            "### Worker memory",
            "",
            f"A fresh `gateway serve --workers {run.workers}`, then `{m.request}` at c={m.concurrency}; RSS (VmRSS) of each",
            "worker after the number of requests the whole gateway answered (per-worker counts from the access log).",
            "",
            "| requests (total) | worker pid | requests (worker) | RSS MiB |",
            "|---:|---:|---:|---:|",
        ]
        for target, workers in sorted(m.checkpoints.items()):
            total = m.served.get(target, target)
            parts += [f"| {total:,} | {w.pid} | {w.requests:,} | {w.rss_kib / 1024:.1f} |" for w in workers]
        growth = m.worker_growth()
        parts += ["", "Growth per worker: " + ", ".join(f"pid {p} x{g:.3f}" for p, g in growth.items()) + ".", ""]
    if run.skipped:
        parts += [*[f"- skipped: {s}" for s in run.skipped], ""]
    return parts


def chart_panels(run: GatewayRun) -> int:
    return int(bool(run.cases)) + int(run.scale is not None or run.memory is not None)


def chart(axes: list[Any], run: GatewayRun) -> None:
    it = iter(axes)
    if run.cases:
        ax = next(it)
        concurrencies = sorted({c for case in run.cases for c in case.gateway})
        width = 0.8 / max(1, len(concurrencies))
        for i, c in enumerate(concurrencies):
            xs = [g + (i - (len(concurrencies) - 1) / 2) * width for g in range(len(run.cases))]
            vals = [case.ratio(c) if c in case.gateway else float("nan") for case in run.cases]
            bars = ax.bar(xs, vals, width, label=f"gateway c={c}")
            for bar, v, case in zip(bars, vals, run.cases):
                if not math.isnan(v):
                    ops = median_run(case.gateway[c]).ops_per_s
                    ax.annotate(f"{v:.2f}\n{ops:,.0f}/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(run.cases)), [f"{c.name}\n({c.token})" for c in run.cases], fontsize=7)
        ax.set_ylabel("throughput / raw single-process loop")
        ax.set_title("Through the gateway (2 workers, wrk over HTTPS) vs raw loop", fontsize=10)
        ax.legend(fontsize=7)
    if run.scale is not None or run.memory is not None:
        ax = next(it)
        labels, values, colors = [], [], []
        if run.scale is not None:
            for w in run.scale.workers:
                for level in run.scale.levels:
                    labels.append(f"derive {w}w\n{level:,} keys")
                    values.append(run.scale.rate(level, w))
                    colors.append("tab:blue" if w == run.scale.workers[0] else "tab:cyan")
        ax.bar(range(len(values)), values, color=colors)
        for x, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (x, v), ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("HEM derive ops/s (c=16)")
        if run.memory is not None:
            ax2 = ax.twinx()
            x = len(values) - 1
            for total, workers in sorted(run.memory.checkpoints.items()):
                for k, worker in enumerate(workers):
                    x += 1
                    mib = worker.rss_kib / 1024
                    ax2.bar([x], [mib], color="tab:orange")
                    ax2.annotate(f"{mib:.1f}", (x, mib), ha="center", va="bottom", fontsize=6)
                    labels.append(f"RSS w{k + 1}\n{total:,} req")
            ax2.set_ylabel("worker RSS MiB")
        ax.set_xticks(range(len(labels)), labels, fontsize=6)
        ax.set_title("Scale (key count) and worker memory", fontsize=10)


def why_missed(run: GatewayRun, ts: list[Target]) -> list[str]:
    """What stands behind each missed target (the analysis of issue 6; figures from this run).

    The ECDH target's analysis also stands where the target was met while one of the rounds
    missed it: then the ratio is at the machine's noise line, and a reader must see that."""
    missed = {t.what for t in ts if not t.met}
    out: list[str] = []
    ecdh = run.case(HEM_ECDH)
    ecdh_missed = any(w.startswith("/api/crypto/ecdh") for w in missed)
    if ecdh is not None and 16 in ecdh.gateway and (ecdh_missed or ecdh.ratio_range(16)[0] < ECDH_TARGET):
        cpu = run.cpu.get(f"{HEM_ECDH}@16", float("nan"))
        raw = median_sample(ecdh.raw)
        if not ecdh_missed:
            low, high = ecdh.ratio_range(16)
            out += [
                f"**ECDH at c=16: met in this run, at the noise line.** The median round reached "
                f"{ecdh.ratio(16):.2f} of the raw loop, but the rounds ranged {low:.2f}-{high:.2f}, and full runs on",
                "the same code have landed on either side of 1.0 (listed below). What follows is where the",
                "gateway's time goes, as for a missed target.",
                "",
            ]
        out += [
            f"**ECDH at c=16.** The two workers spend {cpu:.2f} ms of CPU per answered request, all threads and the",
            f"token's own work included; the raw loop needs {1000 / raw.ops_per_s:.2f} ms per operation in one process. With",
            f"two CPUs shared with wrk, {cpu:.2f} ms per request caps the gateway near {2000 / cpu:,.0f} requests/s.",
        ]
        if 16 in ecdh.bare and ecdh.bare[16]:
            bare_cpu = run.cpu.get(f"{HEM_ECDH}@16-bare", float("nan"))
            out += [
                "The bare HTTPS server of the same round (`bench/gw/bare.py`: aiohttp over TLS in as many processes, placed",
                "on the CPUs as the workers are,",
                "JSON in and out, the same adapter call on the token's threads; no bearer check, audit record,",
                f"access log, metrics or middlewares) reaches {ecdh.bare_ratio(16):.2f} of the raw loop at "
                f"{bare_cpu:.2f} ms of CPU per request,",
                f"and the gateway {ecdh.gateway_over_bare(16):.2f} of the bare server.",
            ]
            loop = run.cpu.get(f"{HEM_ECDH}@16{LOOP_THREAD}", float("nan"))
            bare_loop = run.cpu.get(f"{HEM_ECDH}@16-bare{LOOP_THREAD}", float("nan"))
            if not (math.isnan(loop) or math.isnan(bare_loop)):
                out += [
                    f"Per request, the event-loop threads (HTTP, TLS, middlewares, handlers) use {loop:.2f} ms in the "
                    f"gateway and {bare_loop:.2f} ms in the bare server;",
                    f"the other threads (token calls, and in the gateway the audit writer) {cpu - loop:.2f} and "
                    f"{bare_cpu - bare_loop:.2f} ms.",
                ]
            out += (["So HTTPS and worker threads in Python are not what stands in the way on these two cores; the gap",
                     "is the gateway's own work per request."] if ecdh.bare_ratio(16) >= 1 else
                    ["So HTTPS and worker threads in Python on these two cores take the first part of the gap, and the",
                     "gateway's own work per request the rest."])
            out += [
                "What the gateway's own work is, measured by switching its parts off in turn (A/B runs of 6 s, 4 of",
                "each, interleaved, 2026-12-03, after the changes below; not part of `make bench`): with the audit",
                "trail, the access log and the request metrics all off, the two workers answered 2,680-3,569 requests/s",
                "at 0.52-0.69 ms of CPU each, about the raw loop's rate in partial runs of that hour (2,812-3,442",
                "ops/s), against 1,804-2,212 at",
                "0.81-0.99 ms with everything on. The audit trail is the largest part (off alone: 2,223-3,166",
                "requests/s): each append takes a lock shared with the other worker, reads back the other's last",
                "record, seals the batch with a MAC in the token and wakes the audit thread, and each request waits",
                "for its record before it is answered. The bearer check and the middlewares are a few percent each.",
            ]
        out += [
            "Removed on this path so far: a key lookup in the token per request (key facts are remembered per",
            "process), a point decompression per request, `run_in_executor` for token calls (a lane of worker",
            "threads answers every call that finished with one wake-up of the event loop), one token MAC per audit",
            "record (records are hash-chained and each append is sealed by one MAC), the audit append's directory",
            "listing and read-back while its segment stays the newest, and `labels()` on every metric update.",
            "Then (2026-12-03): worker threads under SCHED_BATCH, so that a woken token or audit thread no longer",
            "preempts the event loop thread only to wait for the interpreter lock it holds (5.8 to 3.0 context",
            "switches per request); access lines held back for up to 0.5 s and written together; an audit",
            "append in about 6 system calls instead of 14 (the segment stays open, the other writer's last record",
            "is read with one `pread`), each record serialised once. Before these the ratio was 0.49-0.55.",
            "Then: on SoftHSM2 the ECDH base key is used through a per-process session copy, which SoftHSM2",
            "keeps in memory instead of checking the key's file on every use (`Token.ecdh_secret` through the",
            "adapter, one thread: 345 to 273 µs of CPU per call, medians of 8 alternating rounds; not part of",
            "`make bench`).",
            "Then (2026-12-04, after a new split: per thread, from /proc, the token threads used as much CPU per",
            "request in the gateway as in the bare server, and the gap was on the event loop and audit threads; with",
            "parts switched off in 2-round runs: audit off 0.94 of raw, all three off 1.06, each alone within the",
            "noise): Z, the ECDH secret read back, is derived as a non-private session object from one prebuilt",
            "template (SoftHSM2 encrypted and decrypted the value of a private one; adapter `ecdh_secret` 199.5 to",
            "145.6 µs, best of 7); the access line is built directly instead of through the `logging` module (10.9%",
            "of the event loop's samples before); request counts and timings are held per process and written to",
            "the shared metric files in one update per bucket, at least every second (about 7% of the samples);",
            "the access line written out without a dict or JSONEncoder (7.5 to 2.9 µs) and each audit record's",
            "canonical form without a dict and a sort (7.1 to 3.6 µs). Partial runs after these: 0.89-1.02.",
            "Then (2026-12-04, evening): each worker keeps to one CPU with its event loop, audit thread and token",
            "threads (`server.cpu_affinity`), so that handing a call over wakes a thread on the same CPU instead of",
            "interrupting the other one; token threads whose calls average over 1 ms, and SoftHSM2's writer, use",
            "both CPUs. Measured per thread from /proc in 5 s windows: 0.48-0.54 to 0.44-0.47 ms of CPU per",
            "request, the token threads' voluntary context switches from 0.90 to 0.45 per request; partial runs",
            "1.05-1.08, and after the derive case 0.99 (0.90-1.10); full `make bench` runs (18:56, 19:31, 19:57)",
            "1.00, 0.97 and 0.91, and at 21:58 and 22:12, with no change on this path but two small ones in",
            "the HEM guard, 1.06 (rounds 0.90-1.10) and 1.06 (1.05-1.06).",
            "The same windows with the audit trail switched off (before the placement): 0.39 ms of CPU per",
            "request and 1.08-1.19 of the raw loop: the audit record every request waits for is still the largest",
            "part of the gateway's own work.",
            "Tried without a change beyond the noise: uvloop as the event loop (again after the changes above),",
            "one or two sessions per worker instead of four (and one token thread per worker with the placement:",
            "0.52 against 0.49 ms of CPU per request), request ids without a read of the kernel's random source,",
            "a shorter GIL switch interval, ctypes calls that keep the GIL, and a Z template of 7 attributes",
            "instead of 16 (adapter `ecdh_secret` 148.0 against 149.6 µs, medians of 8).",
            "Where the rest goes (2026-12-04, late; callgrind on one worker at c=16, `perf` and `perf sched` on",
            "two): the gateway runs 2.33 million user-space instructions per request against 1.95 million per",
            "operation of the raw loop. 1.46 million of them are the adapter's ECDH on the token threads (64% in",
            "libcrypto); the event loop thread runs 0.72-0.77 million (the whole bare server process: 1.87",
            "million per request) and the audit thread 0.07 million. On two CPUs that count would allow about 1.6",
            "of the raw loop; the rest is lost to kernel time (TCP over loopback, futexes, scheduling: about 10%",
            "of the CPU), to wrk, which shares the CPUs (5-7% of each) and preempts the event loop about 1,000",
            "times a second, and to cache misses between the six threads that take turns on each CPU: per",
            "instruction, the gateway's threads ran at about 0.7 of the raw loop's speed.",
            "Tried then, in alternating 5 s windows with CPU per request from /proc, and dropped: two ways of",
            "handing audit records over without a task per batch, with token and audit answers sharing one",
            "wake-up of the loop (the audit thread woke more often, 0.24-0.27 to 0.29-0.36 context switches per",
            "request, and CPU per request was the same or up to 13% higher); a loop turn's token calls handed to",
            "one thread together;",
            "token threads under SCHED_IDLE (0.64-0.69 of raw: they were preempted on every wake-up); one",
            "session per worker (again: 0.49 against 0.47 ms); glibc malloc with `tcache_count=64` in the",
            "workers (within the noise for the gateway, although the raw loop alone gains 12-14% from it).",
            "",
        ]
    if run.scale is not None and any(w.startswith("HEM derive with") for w in missed):
        s = run.scale
        one = f"{s.ratio(1):.2f}" if 1 in s.workers else "-"
        out += [
            f"**Derive with 10,000 keys.** With one worker the ratio is {one}, and the raw loop's (one process, no",
            f"gateway) {s.raw_ratio():.2f}: whatever the loop loses to the key count is SoftHSM2's own cost of a",
            "bigger token, which the gateway pays too. With two workers only one of them stores keys: the other",
            "sends its object changes there (`gateway/token/writerelay.py`), so neither re-reads the token folder",
            "for the other's writes (" + "; ".join(
                f"{a:.1f} ms at about {lvl:,} keys against {b:.2f} ms unchanged" for lvl, (a, b) in sorted(s.reread_ms.items()))
            + ", measured in this run). What is left between the two workers is one hop over a Unix socket per",
            "derive, and the windows' spread on this shared machine (see the scale section).",
            "",
        ]
    vault = next((c for c in run.cases if c.name.startswith("gw-vault")), None)
    if vault is not None and any(w.startswith(vault.name) for w in missed):
        worst = max((r.p99_ms / r.p50_ms for r in vault.raw if r.p50_ms > 0), default=float("nan"))
        out += [
            "**Vault derive tail.** NSS softoken keeps keys in one SQLite database that the two workers share: each",
            f"stored key costs it about {1000 / median_sample(vault.raw).ops_per_s:.0f} ms (the raw loop's time per derive, mostly CPU), one process",
            "writes at a time and the other waits and retries. The raw loop, alone on the database, has stalls too (its worst round's",
            f"p99/p50 is {worst:.1f} in this run); under concurrency every stall holds up the requests queued behind it.",
            "",
        ]
    return out
