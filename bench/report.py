"""Turning results into the printed table, docs/benchmarks.{md,json,png}."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gw import report as gw_report
from bench.gw.results import GatewayRun
from bench.results import DeriveResult, LookupResult, median_sample


@dataclass
class Run:
    """Everything one ``python -m bench`` produced."""

    started: str
    finished: str
    duration_s: float
    machine: dict[str, Any]
    options: dict[str, Any]
    load_before: list[float]
    load_after: list[float]
    derive: list[DeriveResult]
    lookup: LookupResult | None
    skipped: list[str]
    command: str
    gateway: GatewayRun | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 2,
            "started": self.started,
            "finished": self.finished,
            "duration_s": round(self.duration_s, 1),
            "command": self.command,
            "machine": self.machine,
            "load_average": {"before": self.load_before, "after": self.load_after},
            "options": self.options,
            "derive": [d.to_dict() for d in self.derive],
            "lookup": self.lookup.to_dict() if self.lookup else None,
            "gateway": self.gateway.to_dict() if self.gateway else None,
            "skipped": self.skipped,
        }


def _fmt(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _ms(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def derive_rows(results: list[DeriveResult]) -> list[list[str]]:
    rows = []
    for d in results:
        raw = median_sample(d.raw)
        rows.append([d.token, d.case, "raw python-pkcs11", "1", _fmt(raw.ops_per_s), _ms(raw.p50_ms), _ms(raw.p99_ms),
                     "1.00", ""])
        if d.floor:
            f = median_sample(d.floor)
            rows.append([d.token, d.case, "ctypes floor", "1", _fmt(f.ops_per_s), _ms(f.p50_ms), _ms(f.p99_ms),
                         f"{d.floor_ratio():.2f}", ""])
        for threads, samples in sorted(d.adapter.items()):
            s = median_sample(samples)
            lo, hi = d.ratio_range(threads)
            rows.append([d.token, d.case, "adapter", str(threads), _fmt(s.ops_per_s), _ms(s.p50_ms), _ms(s.p99_ms),
                         f"{d.ratio(threads):.2f}", f"{lo:.2f}-{hi:.2f}"])
    return rows


DERIVE_HEADER = ["token", "case", "runner", "threads", "ops/s", "p50 ms", "p99 ms", "ratio vs raw", "rounds"]


def lookup_rows(lookup: LookupResult) -> list[list[str]]:
    low, high = lookup.levels
    rows = []
    for op in lookup.ops:
        a, b = op.at.get(low), op.at.get(high)
        rows.append([
            op.name,
            _ms(a.mean_ms) if a else "-",
            _ms(b.mean_ms) if b else "-",
            f"{op.growth(low, high):.2f}",
            _fmt(a.ops_per_s) if a else "-",
            _fmt(b.ops_per_s) if b else "-",
        ])
    return rows


def lookup_header(lookup: LookupResult) -> list[str]:
    low, high = lookup.levels
    return ["operation", f"ms/op @ {low:,} keys", f"ms/op @ {high:,} keys", f"{high:,}/{low:,}",
            f"ops/s @ {low:,}", f"ops/s @ {high:,}"]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    numeric = [all(_looks_numeric(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    numeric = [all(_looks_numeric(r[i]) for r in rows) for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _looks_numeric(cell: str) -> bool:
    return cell == "-" or cell.replace(",", "").replace(".", "", 1).isdigit()


def headline(run: Run) -> list[str]:
    lines = []
    for d in run.derive:
        ratios = ", ".join(f"{t} thread{'s' if t > 1 else ''} {d.ratio(t):.2f}" for t in sorted(d.adapter))
        added = ""
        if 1 in d.adapter:
            us = d.added_us()
            added = (f"; the adapter adds {us:.0f} us to the median op at 1 thread" if us > 0
                     else "; no added time measurable at 1 thread")
        lines.append(f"{d.token} {d.case}: adapter/raw = {ratios} (raw {median_sample(d.raw).ops_per_s:,.0f} ops/s{added})")
    if run.lookup:
        low, high = run.lookup.levels
        for name in ("adapter get_key", "raw get_key", "adapter aes-gcm", "raw get_key + aes-gcm",
                     "adapter derive-session", "raw derive-session"):
            op = run.lookup.op(name)
            if low in op.at and high in op.at:
                lines.append(f"{run.lookup.token} {name}: {op.at[low].mean_ms:.3f} ms @ {low:,} keys, "
                             f"{op.at[high].mean_ms:.3f} ms @ {high:,} keys ({op.growth(low, high):.2f}x)")
    return lines


def print_tables(run: Run) -> None:
    if run.derive:
        print("\nDerive throughput (P-256 ECDH, CKD_NULL; median of rounds; ratio = adapter / raw single-thread, same round)")
        print(text_table(DERIVE_HEADER, derive_rows(run.derive)))
    if run.lookup:
        print(f"\nLookup cost on {run.lookup.token} (one thread; mean ms per op)")
        print(text_table(lookup_header(run.lookup), lookup_rows(run.lookup)))
    if run.gateway:
        gw_report.print_gateway(run.gateway, text_table)
    print("\nHeadline:")
    for line in (gw_report.headline(run.gateway) if run.gateway else []) + headline(run):
        print("  " + line)
    for line in run.skipped:
        print("  skipped: " + line)


# -- docs/benchmarks.md --------------------------------------------------------

def markdown(run: Run, png_name: str | None) -> str:
    m = run.machine
    o = run.options
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`{run.command}`) on {run.started}; do not edit by hand, re-run it.",
        "Raw figures: [benchmarks.json](benchmarks.json).",
        "",
        "The machines this runs on are shared and noisy, so the figures that count are **ratios against a raw",
        "python-pkcs11 loop measured in the same run, on the same token**, round by round. Absolute ops/s",
        "are shown for scale only.",
        "",
        "## Headline",
        "",
        *[f"- {line}" for line in (gw_report.headline(run.gateway) if run.gateway else [])],
        *[f"- {line}" for line in headline(run)],
        *[f"- skipped: {line}" for line in run.skipped],
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs ({m['cpu_model']}), {m['os']}, kernel {m['kernel']}",
        f"- Python {m['python']}, python-pkcs11 {m['python_pkcs11']}, cryptography {m['cryptography']}",
        f"- SoftHSM2 {m['softhsm2']}, NSS softoken (libnss3) {m['libnss3']}",
        f"- load average before / after the run: {run.load_before} / {run.load_after}; the run took {run.duration_s:.0f} s",
        "",
    ]
    if run.gateway:
        parts += gw_report.markdown(run.gateway, md_table)
    if run.derive:
        parts += [
            "## Derive throughput: adapter against a raw python-pkcs11 loop",
            "",
            f"{o['rounds']} round(s); in each, every variant runs for {o['seconds']} s, back to back, in an order that",
            "rotates from round to round. The ratio is the median of the per-round ratios (each against the raw",
            "loop of the same round), and \"rounds\" is the range of the per-round ratios; ops/s and latencies are",
            "from the round with the median throughput.",
            "",
            md_table(DERIVE_HEADER, derive_rows(run.derive)),
            "",
        ]
    slow = [d for d in run.derive if 1 in d.adapter and d.ratio(1) < 0.9]
    if slow:
        parts += [
            "Where the adapter at 1 thread stays below 0.9 of the raw loop ("
            + ", ".join(f"{d.token} {d.case} {d.ratio(1):.2f}" for d in slow) + "), the token is not the limit",
            "(the ctypes floor row shows how fast it can go): the gap is the adapter's own Python work per call.",
            "`python -m bench --profile DIR` (with pyinstrument installed) writes a profile of each 1-thread",
            "adapter loop to DIR.",
            "",
        ]
    if run.lookup:
        lk = run.lookup
        low, high = lk.levels
        per_s = lk.created / lk.create_seconds if lk.create_seconds else float("nan")
        parts += [
            f"## Lookup cost at {low:,} and {high:,} stored keys ({lk.token})",
            "",
            f"A separate SoftHSM2 token holding exactly {low:,}, then {high:,} key objects (one P-256 key pair, the",
            f"rest AES-256 keys; the {lk.created:,} extra keys were created through the adapter with",
            f"{lk.create_threads} threads at {per_s:,.0f} keys/s). One thread; mean ms per operation.",
            "",
            md_table(lookup_header(lk), lookup_rows(lk)),
            "",
            *[f"- **{op.name}**: {op.what}" for op in lk.ops],
            "",
            "The adapter's rows use kids it has already seen: their handles are cached and confirmed with one",
            "attribute read, so they do not scan. Its first use of a kid costs one `C_FindObjects` scan, the same",
            "as one raw `get_key`.",
            "",
        ]
    if png_name:
        parts += ["## Chart", "", f"![benchmarks]({png_name})", ""]
    parts += [
        "## What is measured",
        "",
        "All in one run, on tokens created fresh for it in a temporary folder (a SoftHSM2 token directory with",
        "`SOFTHSM2_CONF` set for the run, and a new NSS database), before any module is loaded.",
        "",
        f"- **{'derive-and-store'}**: ECDH (`CKM_ECDH1_DERIVE`, `CKD_NULL`) of a P-256 token private key with a",
        "  software-generated peer point, into a stored AES-256 token object (sensitive, not extractable,",
        "  fresh 16-byte `CKA_ID`). Adapter: `Token.ecdh_derive(...)`. Raw: python-pkcs11",
        "  `key.derive_key(KeyType.AES, 256, store=True, template=<the adapter's attributes>)`. The stored",
        "  objects are destroyed after every variant, so each starts from the same object count.",
        "- **derive-session**: ECDH into a session secret that is read and destroyed. The adapter has no call",
        "  that derives a session object and drops it, so it runs `Token.ecdh_secret(...)` and the raw loop does",
        "  the same token work: derive a non-sensitive generic secret session object, read `CKA_VALUE`, destroy it.",
        f"- The adapter runs at {', '.join(map(str, o['threads']))} thread(s): plain threads calling its sync",
        "  methods (what `await token.run(...)` does on the gateway's workers, without the event loop), with a",
        f"  pool of {o['sessions']} sessions. The raw loop is single-threaded, in a separate process: python-pkcs11",
        "  calls `C_Initialize(NULL)`, which SoftHSM2 accepts for one thread, while the adapter initialises",
        "  with `CKF_OS_LOCKING_OK`, and a module is initialised once per process. For NSS softoken, which",
        "  refuses `C_Initialize(NULL)`, the raw process calls `C_Initialize` itself through ctypes (init string",
        "  in `pReserved`) and builds python-pkcs11's `lib` object without its `__init__`.",
        "- python-pkcs11's `derive_key` also reads back about ten attributes of every key it returns (its",
        "  `make_object`); that is part of the raw loop as an application would write it. The **ctypes floor**",
        "  row is the same token calls made with bare ctypes in the raw process (templates and mechanism built",
        "  once): about as fast as Python can drive the token, shown to separate token time from Python time.",
        "  Its ratio is also against the raw python-pkcs11 loop of the same round.",
        "- Thread scaling depends on free cores: with 2 CPUs and other work on the machine (see the load",
        "  averages above), 2 and 4 threads cannot show more than what is left.",
        "- **lookup**: see above. The raw rows are python-pkcs11's `session.get_key(id=..., object_class=...)`,",
        "  a `C_FindObjects` search, which SoftHSM2 answers by scanning every object of the token.",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "make bench                                  # the full run (about 12 minutes), writes docs/benchmarks.*",
        "make bench BENCH_ARGS='--quick'             # smoke run, small counts, writes state/bench/",
        "make bench BENCH_ARGS='--only derive-session --tokens softhsm'",
        "make bench BENCH_ARGS='--only gw-hem-ecdh,gw-hem-derive --concurrency 16 --profile state/profile'",
        ".venv/bin/python -m bench --help",
        "```",
        "",
        "`--profile DIR` also records, with py-spy, where the gateway workers' Python time goes (the threads",
        "holding the GIL, as collapsed stacks) during one extra c=16 window per gateway case.",
        "",
        "Only a complete default run writes to `docs/`; `--quick`, `--only` and other partial runs write to",
        "`state/bench/` unless `--out` says otherwise.",
        "",
    ]
    return "\n".join(parts)


# -- docs/benchmarks.png ---------------------------------------------------------

def chart(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gw_panels = gw_report.chart_panels(run.gateway) if run.gateway else 0
    panels = int(bool(run.derive)) + int(bool(run.lookup)) + gw_panels
    if not panels:
        return
    columns = min(panels, 2)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for spare in flat[panels:]:
        spare.axis("off")
    if run.gateway and gw_panels:
        gw_report.chart(flat[:gw_panels], run.gateway)
    ax_iter = iter(flat[gw_panels:])
    if run.derive:
        ax = next(ax_iter)
        groups = [f"{d.token}\n{d.case}" for d in run.derive]
        threads = sorted({t for d in run.derive for t in d.adapter})
        series = [("raw 1 thread", [1.0 for _ in run.derive], [median_sample(d.raw).ops_per_s for d in run.derive])]
        for t in threads:
            series.append((f"adapter {t} thread{'s' if t > 1 else ''}",
                           [d.ratio(t) if t in d.adapter else 0.0 for d in run.derive],
                           [median_sample(d.adapter[t]).ops_per_s if t in d.adapter else 0.0 for d in run.derive]))
        width = 0.8 / len(series)
        for i, (label, ratios, ops) in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            bars = ax.bar(xs, ratios, width, label=label)
            for bar, r, v in zip(bars, ratios, ops):
                ax.annotate(f"{r:.2f}\n{v:,.0f}/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel("throughput / raw python-pkcs11 single-thread")
        ax.set_title("Derive: adapter vs raw loop (same run, same token)", fontsize=10)
        ax.legend(fontsize=7)
        ax.set_ylim(0, max(max(s[1]) for s in series) * 1.25)
    if run.lookup:
        ax = next(ax_iter)
        lk = run.lookup
        low, high = lk.levels
        names = [op.name for op in lk.ops]
        width = 0.38
        for i, (level, color) in enumerate(((low, "tab:blue"), (high, "tab:red"))):
            xs = [n + (i - 0.5) * width for n in range(len(names))]
            vals = [op.at[level].mean_ms if level in op.at else float("nan") for op in lk.ops]
            bars = ax.bar(xs, vals, width, label=f"{level:,} keys", color=color)
            for bar, v in zip(bars, vals):
                ax.annotate(_ms(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=6)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=7)
        ax.set_ylabel("ms per operation (log scale)")
        ax.set_title(f"Lookup cost with {low:,} and {high:,} stored keys ({lk.token})", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(run: Run, out: Path, *, with_chart: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "benchmarks.json", "md": out / "benchmarks.md"}
    paths["json"].write_text(json.dumps(_finite(run.to_dict()), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    png = None
    if with_chart:
        paths["png"] = out / "benchmarks.png"
        chart(run, paths["png"])
        png = paths["png"].name
    paths["md"].write_text(markdown(run, png), encoding="utf-8")
    return paths


def _finite(obj: Any) -> Any:
    """NaN/inf become null: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
