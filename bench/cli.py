"""``python -m bench``: run the benchmarks and write docs/benchmarks.{md,json,png}."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench import cases, machine
from bench.baseline import REPO, RawError, RawWorker
from bench.cases import ADAPTER_CASES, DERIVE_CASES, LOOKUP, Timing
from bench.gw.cases import GATEWAY_CASES, GatewayTiming, GatewayTokens, run_gateway
from bench.report import Run, print_tables, write_outputs
from bench.gw.results import GatewayRun
from bench.results import DeriveResult, LookupResult
from bench.tokens import NSS_CANDIDATES, SOFTHSM_CANDIDATES, BenchToken, find_module, prepare
from bench.timing import timed_loop

log = logging.getLogger("bench")

TOKEN_KINDS = ("softhsm", "nss")
ALL_CASES = (*ADAPTER_CASES, *GATEWAY_CASES)
FULL: dict[str, Any] = {"seconds": 1.0, "rounds": 5, "keys": (10, 10_000), "gw_seconds": 5.0, "gw_rounds": 3,
                        "scale_keys": (10, 10_000), "memory_requests": (10_000, 100_000)}
QUICK: dict[str, Any] = {"seconds": 0.25, "rounds": 1, "keys": (10, 200), "gw_seconds": 1.0, "gw_rounds": 1,
                         "scale_keys": (10, 200), "memory_requests": (2_000, 6_000)}
DOCS = REPO / "docs"
PARTIAL_OUT = REPO / "state" / "bench"


def _csv(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: expected a comma list of {', '.join(allowed)}; got {value!r}")
    return items


def _ints(value: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="On the same fresh tokens, in one run: the adapter vs a raw python-pkcs11 loop (derive "
                    "throughput ratios, lookup cost at few and many stored keys), and `gateway serve --workers 2` "
                    "under wrk vs the raw loop (HEM derive, HEM ECDH, Vault derive at several concurrencies; "
                    "derive with few and many keys; worker memory).",
    )
    p.add_argument("--quick", action="store_true", help="small counts and short windows (a smoke run)")
    p.add_argument("--only", type=lambda v: _csv(v, ALL_CASES, "--only"), default=ALL_CASES,
                   help=f"comma list of cases to run: {', '.join(ALL_CASES)} (default: all)")
    p.add_argument("--tokens", type=lambda v: _csv(v, TOKEN_KINDS, "--tokens"), default=TOKEN_KINDS,
                   help="comma list of tokens for the derive cases: softhsm, nss (lookup is SoftHSM2 only)")
    p.add_argument("--seconds", type=float, help=f"measuring window per variant (default {FULL['seconds']}, "
                                                 f"--quick {QUICK['seconds']})")
    p.add_argument("--rounds", type=int, help=f"rounds per derive case (default {FULL['rounds']}, --quick 1)")
    p.add_argument("--threads", type=_ints, default=(1, 2, 4), help="adapter thread counts (default 1,2,4)")
    p.add_argument("--keys", type=_ints, help="low,high stored-key counts for the lookup case "
                                              "(default 10,10000; --quick 10,200)")
    p.add_argument("--sessions", type=int, default=4, help="adapter session pool size, and the gateway's "
                                                           "sessions per worker and token (default 4)")
    p.add_argument("--gw-seconds", type=float, help=f"wrk and raw window of the gateway cases (default "
                                                    f"{FULL['gw_seconds']:g}, --quick {QUICK['gw_seconds']:g})")
    p.add_argument("--gw-rounds", type=int, help=f"rounds per gateway case (default {FULL['gw_rounds']}, --quick 1)")
    p.add_argument("--concurrency", type=_ints, default=(1, 16, 64), help="wrk connections (default 1,16,64)")
    p.add_argument("--workers", type=int, default=2, help="gateway serve --workers (default 2)")
    p.add_argument("--scale-keys", type=_ints, help="low,high key counts of gw-scale (default 10,10000; "
                                                    "--quick 10,200)")
    p.add_argument("--memory-requests", type=_ints, help="gw-memory checkpoints (default 10000,100000; "
                                                         "--quick 2000,6000)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the gateway's logging level (default info: JSON access logs, as deployed)")
    p.add_argument("--out", type=Path, help="output folder (default: docs/ for a complete default run, "
                                            "else state/bench/)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart (no matplotlib needed)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also profile one 1-thread adapter loop per derive case with pyinstrument "
                        "(if installed) and write the text profiles to DIR")
    p.add_argument("--keep", action="store_true", help="keep the temporary token folder (its path is printed)")
    p.add_argument("--softhsm-module", help="path of libsofthsm2.so (default: searched)")
    p.add_argument("--nss-module", help="path of libsoftokn3.so (default: searched)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    complete = (not args.quick and args.only == ALL_CASES and args.tokens == TOKEN_KINDS
                and args.seconds is None and args.rounds is None and args.keys is None
                and args.threads == (1, 2, 4) and args.gw_seconds is None and args.gw_rounds is None
                and args.concurrency == (1, 16, 64) and args.workers == 2 and args.scale_keys is None
                and args.memory_requests is None and args.log_level == "info" and args.sessions == 4)
    args.seconds = args.seconds if args.seconds is not None else preset["seconds"]
    args.rounds = args.rounds if args.rounds is not None else preset["rounds"]
    args.keys = args.keys or preset["keys"]
    args.gw_seconds = args.gw_seconds if args.gw_seconds is not None else preset["gw_seconds"]
    args.gw_rounds = args.gw_rounds if args.gw_rounds is not None else preset["gw_rounds"]
    args.scale_keys = args.scale_keys or preset["scale_keys"]
    args.memory_requests = args.memory_requests or preset["memory_requests"]
    if len(args.scale_keys) != 2 or args.scale_keys[1] <= args.scale_keys[0]:
        p.error("--scale-keys takes two counts, low,high, with low < high")
    if args.gw_rounds < 1 or args.gw_seconds <= 0 or args.workers < 1:
        p.error("--gw-rounds, --gw-seconds and --workers must be positive")
    if len(args.keys) != 2 or args.keys[0] < 3 or args.keys[1] <= args.keys[0]:
        p.error("--keys takes two counts, low,high, with 3 <= low < high")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds and --seconds must be positive")
    if max(args.threads) > args.sessions:
        p.error("--threads above --sessions would only measure waiting for a session")
    args.out = args.out or (DOCS if complete else PARTIAL_OUT)
    return args


def _profile(token_name: str, case: str, op: Callable[[int], object], seconds: float, directory: Path) -> None:
    try:
        from pyinstrument import Profiler  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        log.warning("--profile: pyinstrument is not installed (pip install pyinstrument); skipped")
        return
    directory.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    sample = timed_loop(op, threads=1, seconds=seconds)
    profiler.stop()
    path = directory / f"profile-{token_name}-{case}.txt"
    path.write_text(f"{sample}\n\n" + profiler.output_text(unicode=False, color=False), encoding="utf-8")
    log.info("  profile written to %s", path)


def run(args: argparse.Namespace, argv: list[str]) -> Run:
    from gateway.token import Token

    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    load_before = machine.load_average()
    timing = Timing(seconds=args.seconds, rounds=args.rounds, threads=tuple(args.threads))
    skipped: list[str] = []
    derive_cases = [c for c in DERIVE_CASES if c in args.only]
    want_lookup = LOOKUP in args.only
    gateway_cases = tuple(c for c in GATEWAY_CASES if c in args.only)

    softhsm_module = find_module(SOFTHSM_CANDIDATES, args.softhsm_module)
    want_nss = "nss" in args.tokens and (bool(derive_cases) or bool(gateway_cases))
    nss_module = find_module(NSS_CANDIDATES, args.nss_module) if want_nss else None
    if softhsm_module is None:
        raise SystemExit("SoftHSM2 (libsofthsm2.so) not found: install softhsm2 (`make bench` does) "
                         "or pass --softhsm-module")
    if want_nss and nss_module is None:
        skipped.append("NSS softoken: libsoftokn3.so not found (install libnss3 or pass --nss-module)")

    root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    derive: list[DeriveResult] = []
    lookup: LookupResult | None = None
    gateway: GatewayRun | None = None
    try:
        # Tokens first, then load modules: SoftHSM2 sees only tokens present at C_Initialize.
        tokens = prepare(root, softhsm_module=softhsm_module, nss_module=nss_module, sessions=args.sessions,
                         gateway=bool(gateway_cases))
        log.info("fresh tokens under %s", root)
        with ExitStack() as stack:
            plan: list[BenchToken] = []
            if derive_cases and "softhsm" in args.tokens and tokens.softhsm_derive:
                plan.append(tokens.softhsm_derive)
            if derive_cases and tokens.nss:
                plan.append(tokens.nss)
            for bt in plan:
                token = Token(bt.settings)
                stack.callback(token.close)
                try:
                    raw = RawWorker(bt)
                except RawError as exc:
                    skipped.append(f"{bt.settings.name}: the raw python-pkcs11 worker could not start ({exc})")
                    continue
                stack.callback(raw.close)
                base, peer = cases.make_base_key(token), cases.software_peer()
                for case in derive_cases:
                    log.info("%s %s:", token.name, case)
                    derive.append(cases.run_derive_case(token, raw, case, base, peer, timing))
                    if args.profile:
                        _profile(token.name, case, cases.adapter_op(token, case, base, peer), timing.seconds,
                                 args.profile)
                        if case == cases.DERIVE_STORE:
                            raw.call("cleanup", label=cases.STORE_LABEL)
            if want_lookup and tokens.softhsm_lookup:
                bt = tokens.softhsm_lookup
                token = Token(bt.settings)
                stack.callback(token.close)
                raw = RawWorker(bt)
                stack.callback(raw.close)
                log.info("%s lookup:", token.name)
                lookup = cases.run_lookup_case(token, raw, (args.keys[0], args.keys[1]), timing,
                                               create_threads=max(args.threads))
        if gateway_cases and tokens.softhsm_gateway is not None:
            gw_timing = GatewayTiming(seconds=args.gw_seconds, rounds=args.gw_rounds, concurrency=args.concurrency,
                                      scale_levels=(args.scale_keys[0], args.scale_keys[1]),
                                      memory=tuple(args.memory_requests), workers=args.workers,
                                      sessions=args.sessions, log_level=args.log_level)
            gw_tokens = GatewayTokens(tokens.softhsm_gateway, tokens.nss_gateway, tokens.nss_gateway_directory)
            gateway = run_gateway(gw_tokens, gw_timing, root / "gw", gateway_cases,
                                  profile=args.profile / "gateway" if args.profile else None)
            skipped += gateway.skipped
            gateway.skipped = []
    finally:
        if args.keep:
            log.info("kept the token folder %s (SOFTHSM2_CONF=%s)", root, root / "softhsm" / "softhsm2.conf")
        else:
            shutil.rmtree(root, ignore_errors=True)

    return Run(
        started=started_at,
        finished=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        duration_s=time.perf_counter() - started,
        machine=machine.describe(),
        options={"quick": args.quick, "cases": list(args.only), "tokens": list(args.tokens), "seconds": args.seconds,
                 "rounds": args.rounds, "threads": list(args.threads), "keys": list(args.keys),
                 "sessions": args.sessions, "gw_seconds": args.gw_seconds, "gw_rounds": args.gw_rounds,
                 "concurrency": list(args.concurrency), "workers": args.workers,
                 "scale_keys": list(args.scale_keys), "memory_requests": list(args.memory_requests),
                 "log_level": args.log_level},
        load_before=load_before,
        load_after=machine.load_average(),
        derive=derive,
        lookup=lookup,
        gateway=gateway,
        skipped=skipped,
        command="python -m bench" + ("" if not argv else " " + shlex.join(argv)),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = run(args, argv)
    print_tables(result)
    paths = write_outputs(result, args.out, with_chart=not args.no_chart)
    print("\nwritten: " + ", ".join(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in paths.values()))
    return 0
