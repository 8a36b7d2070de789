"""The gateway-level cases: wrk against ``gateway serve --workers 2``, the raw loop on the same token.

Each case alternates, round by round and in a rotating order, a raw
python-pkcs11 window and one wrk window per concurrency; the ratio is taken
within a round, so both sides saw the same machine load.  Keys a window
creates are destroyed after it (by the raw process, which is idle then), so
every window starts from the same object count.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from bench.baseline import RawWorker
from bench.gw import wrk
from bench.gw.bare import BareServer
from bench.gw.client import Client, p256_peer, vault_jwt
from bench.gw.profile import summarize as profile_summary
from bench.gw.results import LOOP_THREAD, GatewayCase, GatewayRun, MemoryResult, ScaleResult, WorkerMemory
from bench.gw.server import GatewayProcess, GatewaySetup, TokenEntry, free_port, make_setup, rss_kib
from bench.tokens import BenchToken
from gateway.logs import ACCESS_FLUSH_SECONDS
from gateway.tls import ensure_dev_tls

log = logging.getLogger("bench")

HEM_DERIVE = "gw-hem-derive"
HEM_ECDH = "gw-hem-ecdh"
WARMUP_SECONDS = 3  # the uncounted wrk window before a case's rounds (see run_case)
VAULT_DERIVE = "gw-vault-derive"
SCALE = "gw-scale"
MEMORY = "gw-memory"
GATEWAY_CASES = (HEM_DERIVE, HEM_ECDH, VAULT_DERIVE, SCALE, MEMORY)
DERIVED_MARKER = "bench-derived"  # in the label of every key a derive window makes (removed after it)
FILLER_MARKER = "bench-filler"


@dataclass(frozen=True)
class GatewayTiming:
    seconds: float  # wrk and raw window
    rounds: int
    concurrency: tuple[int, ...] = (1, 16, 64)
    scale_levels: tuple[int, int] = (10, 10_000)
    scale_concurrency: int = 16
    memory: tuple[int, int] = (10_000, 100_000)
    memory_concurrency: int = 16
    workers: int = 2
    sessions: int = 4
    log_level: str = "info"


@dataclass(frozen=True)
class GatewayTokens:
    softhsm: BenchToken
    nss: BenchToken | None
    nss_directory: Path | None


def _cpu_seconds(pid: int, *, loop_only: bool = False) -> float:
    """CPU time of process ``pid``, or of its main thread only (the event loop's, in the
    gateway and the bare server: HTTP, TLS, middlewares and handlers run there)."""
    path = f"/proc/{pid}/task/{pid}/stat" if loop_only else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _entries(tokens: GatewayTokens, sessions: int) -> list[TokenEntry]:
    s = tokens.softhsm.settings
    out = [TokenEntry("softhsm", s.module, s.label or "", s.pin or "", "GATEWAY_BENCH_SOFTHSM_PIN", sessions,
                      environment=dict(s.environment))]
    if tokens.nss is not None:
        n = tokens.nss.settings
        out.append(TokenEntry("nss", n.module, n.label or "", n.pin or "", "GATEWAY_BENCH_NSS_PIN", sessions,
                              init_args=n.init_args))
    return out


class Workload:
    """One API call as wrk sends it, and the raw loop doing the same token work."""

    def __init__(self, name: str, token: str, route: str, url: str, body: dict[str, Any], bearer: str,
                 what: str, raw: RawWorker, raw_op: str, raw_args: dict[str, Any], raw_what: str,
                 stores: bool) -> None:
        self.name, self.token, self.route, self.url, self.body, self.bearer = name, token, route, url, body, bearer
        self.what, self.raw, self.raw_op, self.raw_args, self.raw_what = what, raw, raw_op, raw_args, raw_what
        self.stores = stores

    def cleanup(self) -> int:
        if not self.stores:
            return 0
        return int(self.raw.call("cleanup_marker", marker=DERIVED_MARKER)["destroyed"])


class GatewayBench:
    """A running gateway on the run's tokens, its clients and raw workers."""

    def __init__(self, tokens: GatewayTokens, timing: GatewayTiming, workdir: Path) -> None:
        self.tokens = tokens
        self.timing = timing
        self.workdir = workdir
        self.setup: GatewaySetup = make_setup(workdir / "gateway", _entries(tokens, timing.sessions),
                                              hem_token="softhsm", log_level=timing.log_level)
        self.process: GatewayProcess | None = None
        self.current_workers = timing.workers
        self.raw_hsm = RawWorker(tokens.softhsm)
        self.raw_nss = RawWorker(tokens.nss) if tokens.nss is not None else None
        self.cpu: dict[str, float] = {}
        self.start()
        self.client = Client(self.setup.port, self.setup.ca)
        self.gen = self.client.hem_login(self.setup.passphrase, "keymgmt:gen")
        self.base = self.client.call("POST", "/api/keymgmt/create",
                                     {"label": "bench-base", "type": "SECP256R1", "mode": "ECDH"}, bearer=self.gen)["kid"]
        self.use = self.client.hem_login(self.setup.passphrase, f"keymgmt:use:{self.base}")
        peer_key, self.peer_b64 = p256_peer()
        self.peer_raw = peer_key.public_key().public_bytes(serialization.Encoding.X962,
                                                           serialization.PublicFormat.UncompressedPoint)

    # -- the process ---------------------------------------------------------

    def start(self, workers: int | None = None) -> None:
        self.current_workers = workers or self.timing.workers
        self.process = GatewayProcess(self.setup, self.current_workers)
        log.info("  gateway serve --workers %d on port %d (worker pids %s)", self.current_workers, self.setup.port,
                 self.workers())

    def restart(self, workers: int | None = None) -> None:
        self.stop()
        self.start(workers)
        self.client.close()

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop()
            if code != 0:
                log.warning("  the gateway exited with code %d; log tail:\n%s", code, self.process.log_tail())
            self.process = None

    def close(self) -> None:
        self.client.close()
        self.stop()
        self.raw_hsm.close()
        if self.raw_nss is not None:
            self.raw_nss.close()

    @property
    def url(self) -> str:
        return self.setup.base_url

    def workers(self) -> list[int]:
        """The pids that serve: the supervisor's children, or the one process of ``--workers 1``."""
        assert self.process is not None
        return self.process.worker_pids() if self.current_workers > 1 else [self.process.proc.pid]

    # -- measuring -------------------------------------------------------------

    def wrk(self, load: Workload, concurrency: int, seconds: float | None = None, tag: str = "",
            pids: list[int] | None = None, url: str | None = None) -> wrk.WrkResult:
        pids = self.workers() if pids is None else pids
        before = sum(_cpu_seconds(p) for p in pids)
        before_loop = sum(_cpu_seconds(p, loop_only=True) for p in pids)
        result = wrk.run(url or load.url, method="POST", body=load.body, bearer=load.bearer, concurrency=concurrency,
                         seconds=seconds or self.timing.seconds, workdir=self.workdir, name=f"{load.name}-{concurrency}")
        if result.requests:
            used = sum(_cpu_seconds(p) for p in pids) - before
            used_loop = sum(_cpu_seconds(p, loop_only=True) for p in pids) - before_loop
            key = f"{load.name}@{concurrency}{tag}"
            self.cpu.setdefault(key, used / result.requests * 1e3)
            self.cpu.setdefault(f"{key}{LOOP_THREAD}", used_loop / result.requests * 1e3)
        return result

    def hem_derive(self) -> Workload:
        label = json.dumps({"hem": 1, "l": DERIVED_MARKER, "t": "AES256", "m": "", "c": int(time.time()),
                            "u": int(time.time()), "o": "der", "b": self.base, "p": "0" * 32, "r": "raw"},
                           separators=(",", ":"))
        return Workload(
            HEM_DERIVE, "softhsm", "POST /api/keymgmt/derive", self.url + "/api/keymgmt/derive",
            {"kid": self.base, "label": DERIVED_MARKER, "type": "AES256", "pubkey": self.peer_b64}, self.gen,
            "HEM derive: P-256 ECDH of a stored base key with the client's point into a stored AES-256 key",
            self.raw_hsm, "derive_store",
            {"base_kid": self.base, "peer": self.peer_raw.hex(), "label": label},
            "python-pkcs11 derive_key(store=True): one C_DeriveKey into a token object", stores=True)

    def hem_ecdh(self) -> Workload:
        return Workload(
            HEM_ECDH, "softhsm", "POST /api/crypto/ecdh", self.url + "/api/crypto/ecdh",
            {"kid": self.base, "pubkey": self.peer_b64}, self.use,
            "HEM ECDH: the shared secret of a stored P-256 key and the client's point (nothing stored)",
            self.raw_hsm, "derive_session", {"base_kid": self.base, "peer": self.peer_raw.hex()},
            "python-pkcs11 derive_key into a session object, read CKA_VALUE, destroy", stores=False)

    def vault_derive(self) -> Workload:
        assert self.raw_nss is not None
        bearer = vault_jwt(self.setup.issuer_key)
        vault = self.client.call("POST", "/api/v1/vaults", {"name": "bench", "description": "bench"}, bearer=bearer)
        parent = self.client.call("POST", f"/api/v1/vaults/{vault['id']}/keys",
                                  {"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20",
                                   "name": "bench-parent", "description": "parent"}, bearer=bearer)
        nonce, context = 1, "channel-6852386c-8a3d-41c6-aa0e-766a31a8faaf"
        route = f"/api/v1/vaults/{vault['id']}/keys/{parent['id']}/derive"
        label = json.dumps({"k": "vault-key/1", "vault_id": vault["id"], "name": DERIVED_MARKER,
                            "description": "this is a secure channel", "spec": "ChaCha20", "type": "symmetric",
                            "usage": "encrypt/decrypt", "created_at": "2026-01-01T00:00:00.000000+00:00",
                            "derivation": {"kdf": "hkdf-sha256", "parent_id": parent["id"], "nonce": nonce,
                                           "context": context}}, separators=(",", ":"))
        return Workload(
            VAULT_DERIVE, "nss", "POST /api/v1/vaults/{id}/keys/{key_id}/derive", self.url + route,
            {"nonce": nonce, "context": context, "name": DERIVED_MARKER, "description": "this is a secure channel"},
            bearer, "Vault derive: HKDF-SHA256 (CKM_HKDF_DERIVE) of a stored ChaCha20 key into a stored ChaCha20 key",
            self.raw_nss, "hkdf_store",
            {"base_kid": uuid.UUID(parent["id"]).bytes.hex(), "salt": nonce.to_bytes(4, "big").hex(),
             "info": context.encode().hex(), "label": label},
            "one C_DeriveKey (CKM_HKDF_DERIVE) into a token object, in ctypes on python-pkcs11's session",
            stores=True)

    def run_case(self, load: Workload) -> GatewayCase:
        t = self.timing
        case = GatewayCase(load.name, load.token, load.route, load.what, load.raw_what,
                           gateway={c: [] for c in t.concurrency})
        load.cleanup()

        def measure_raw(rnd: int) -> None:
            sample = load.raw.sample(load.raw_op, seconds=t.seconds, **load.raw_args)
            case.raw.append(sample)
            log.info("  %-16s round %d  raw loop     : %8.1f ops/s  p50 %7.2f ms  p99 %7.2f ms", load.name, rnd + 1,
                     sample.ops_per_s, sample.p50_ms, sample.p99_ms)
            load.cleanup()

        def measure_gateway(concurrency: int, rnd: int) -> None:
            result = self.wrk(load, concurrency)
            case.gateway[concurrency].append(result)
            errors = f"  errors {result.errors}" if result.errors else ""
            log.info("  %-16s round %d  gateway c=%-3d: %8.1f ops/s  p50 %7.2f ms  p99 %7.2f ms%s", load.name,
                     rnd + 1, concurrency, result.ops_per_s, result.p50_ms, result.p99_ms, errors)
            load.cleanup()

        variants: list[Callable[[int], None]] = [measure_raw, *(functools.partial(measure_gateway, c)
                                                                 for c in t.concurrency)]
        bare: BareServer | None = None
        if load.name == HEM_ECDH:
            bare = self.start_bare()
            bare_concurrency = 16 if 16 in t.concurrency else max(t.concurrency)
            case.bare[bare_concurrency] = []

            def measure_bare(rnd: int) -> None:
                assert bare is not None
                result = self.wrk(load, bare_concurrency, tag="-bare", pids=bare.pids,
                                  url=f"https://127.0.0.1:{bare.port}/api/crypto/ecdh")
                case.bare[bare_concurrency].append(result)
                errors = f"  errors {result.errors}" if result.errors else ""
                log.info("  %-16s round %d  bare c=%-6d: %8.1f ops/s  p50 %7.2f ms  p99 %7.2f ms%s", load.name,
                         rnd + 1, bare_concurrency, result.ops_per_s, result.p50_ms, result.p99_ms, errors)

            variants.append(measure_bare)
        try:
            # One uncounted window per server first, as the raw loop has its uncounted calls: the first
            # seconds of a fresh gateway are not its steady state (handles not cached yet, the ECDH
            # base key used as a token object until its session copy is made, COPY_AFTER_SECONDS).
            warm_concurrency = 16 if 16 in t.concurrency else max(t.concurrency)
            self.wrk(load, warm_concurrency, seconds=WARMUP_SECONDS, tag="-warmup")
            if bare is not None:
                self.wrk(load, warm_concurrency, seconds=WARMUP_SECONDS, tag="-bare-warmup", pids=bare.pids,
                         url=f"https://127.0.0.1:{bare.port}/api/crypto/ecdh")
            load.cleanup()
            for rnd in range(t.rounds):
                shift = rnd % len(variants)
                for measure in variants[shift:] + variants[:shift]:
                    measure(rnd)
        finally:
            if bare is not None:
                bare.stop()
        return case

    def start_bare(self) -> BareServer:
        """The bare HTTPS server (bench/gw/bare.py) on the softhsm token, as many processes as workers."""
        s = self.tokens.softhsm.settings
        tls = ensure_dev_tls(self.setup.directory / "tls")
        server = BareServer(port=free_port(), cert=tls.directory / "server.crt", key=tls.directory / "server.key",
                            module=s.module, label=s.label or "", pin=s.pin or "", sessions=self.timing.sessions,
                            environment=dict(s.environment), workers=self.timing.workers,
                            log_path=self.setup.directory / "bare.log")
        log.info("  bare HTTPS server (bench/gw/bare.py) on port %d, %d processes", server.port, len(server.procs))
        return server

    # -- scale -------------------------------------------------------------------

    def run_scale(self, create_keys: Callable[[int], float]) -> ScaleResult:
        """Derive with the low key count, add keys up to the high count, derive again; each with the
        benchmark's workers and with one worker.

        Keys derived at the low level are removed after each window.  At the high level they stay:
        SoftHSM2 re-lists its token directory (and lstat()s every file in it) on each C_DestroyObject,
        so removing a thousand keys from a 10,000-key token would take minutes; the object count at
        the start of each window is recorded instead.
        """
        t = self.timing
        low, high = t.scale_levels
        workers = tuple(dict.fromkeys((t.workers, 1)))
        load = self.hem_derive()
        result = ScaleResult(token="softhsm", concurrency=t.scale_concurrency, levels=(low, high), workers=workers)
        rounds = min(2, t.rounds)
        load.cleanup()
        keys = self.key_objects()
        if keys < low:
            create_keys(low - keys)
        for level in (low, high):
            clean = level == low
            if level == high:
                keys = self.key_objects()
                log.info("  %s: creating %d keys through the adapter ...", SCALE, high - keys)
                seconds = create_keys(high - keys)
                result.created, result.create_seconds = high - keys, seconds
                log.info("  %s: %d keys in %.1f s (%.0f keys/s)", SCALE, high - keys, seconds,
                         (high - keys) / seconds if seconds else 0)
            for count in workers:
                if count != self.current_workers:
                    self.restart(count)
                # The first calls after many new objects make each worker's SoftHSM2 read them in: not measured.
                self.wrk(load, t.scale_concurrency, seconds=1, tag="-warmup")
                if clean:
                    load.cleanup()
                runs = result.gateway.setdefault(count, {}).setdefault(level, [])
                objects = result.objects.setdefault(count, {}).setdefault(level, [])
                for rnd in range(rounds):
                    objects.append(self.key_objects())
                    run = self.wrk(load, t.scale_concurrency, tag=f"-{level}-keys-{count}w")
                    runs.append(run)
                    if clean:
                        load.cleanup()
                    log.info("  %-16s %6d keys, %d worker%s, round %d: c=%d %8.1f ops/s (p50 %.1f ms, p99 %.1f ms)",
                             SCALE, objects[-1], count, "s" if count > 1 else "", rnd + 1, t.scale_concurrency,
                             run.ops_per_s, run.p50_ms, run.p99_ms)
            result.reread_ms[level] = self.reread(load, lambda: create_keys(1))
            log.info("  %-16s %6d keys: one read after another process stored a key %.1f ms, unchanged %.2f ms",
                     SCALE, self.key_objects(), *result.reread_ms[level])
            for rnd in range(rounds):
                sample = load.raw.sample(load.raw_op, seconds=t.seconds, **load.raw_args)
                result.raw.setdefault(level, []).append(sample)
                if clean:
                    load.cleanup()
                log.info("  %-16s %6d keys, raw loop, round %d: %8.1f ops/s", SCALE, self.key_objects(), rnd + 1,
                         sample.ops_per_s)
        if self.current_workers != t.workers:
            self.restart(t.workers)
        return result

    def reread(self, load: Workload, store_one: Callable[[], object], times: int = 5) -> tuple[float, float]:
        """The token's own price of a second process: one attribute read in the raw process right after
        this process stored a key, and with nothing changed in between (medians of ``times``)."""
        base = {"base_kid": load.raw_args["base_kid"]}
        load.raw.call("read_timed", **base)
        after, quiet = [], []
        for _ in range(times):
            store_one()
            after.append(float(load.raw.call("read_timed", **base)["ms"]))
            quiet.append(float(load.raw.call("read_timed", **base)["ms"]))
        return statistics.median(after), statistics.median(quiet)

    def key_objects(self) -> int:
        return int(self.raw_hsm.call("count_objects")["keys"])

    # -- memory ------------------------------------------------------------------

    def run_memory(self) -> MemoryResult:
        """RSS of each worker of a fresh gateway after the checkpoints' numbers of ECDH calls."""
        t = self.timing
        self.restart()
        load = self.hem_ecdh()
        result = MemoryResult(request=f"{load.route} (P-256, nothing stored)", concurrency=t.memory_concurrency)
        served, rate = 0, 0.0
        for target in sorted(t.memory):
            while served < target:
                remaining = target - served
                # Short windows near a checkpoint, so it is not overshot by much (wrk runs whole seconds).
                seconds = max(1.0, min(10.0, remaining / rate if rate else 1.0))
                run = self.wrk(load, t.memory_concurrency, seconds=seconds, tag="-memory")
                if run.failed:
                    raise RuntimeError(f"{MEMORY}: {run.failed} failed requests ({run.errors})")
                served += run.requests
                rate = run.ops_per_s or rate
            per_pid = self._requests_per_worker()
            result.checkpoints[target] = [WorkerMemory(pid, per_pid.get(pid, 0), rss_kib(pid)) for pid in self.workers()]
            result.served[target] = served
            log.info("  %s: after %d requests: %s", MEMORY, served,
                     ", ".join(f"pid {w.pid} {w.requests} requests {w.rss_kib / 1024:.1f} MiB"
                               for w in result.checkpoints[target]))
        return result

    def _requests_per_worker(self) -> dict[int, int]:
        """Answered requests per worker pid, from the access log of the current gateway."""
        assert self.process is not None
        time.sleep(ACCESS_FLUSH_SECONDS + 0.5)  # the workers hold access lines back that long
        counts: Counter[int] = Counter()
        with self.process.log_path.open("rb") as f:
            for line in f:
                if b'"gateway.access"' in line:
                    try:
                        counts[int(json.loads(line)["pid"])] += 1
                    except (ValueError, KeyError):
                        continue
        return dict(counts)

    # -- profile -------------------------------------------------------------------

    def profile(self, load: Workload, concurrency: int, directory: Path) -> None:
        """py-spy (if installed) on every worker during one extra wrk window: collapsed stacks of the
        threads holding the GIL, i.e. where the workers' Python time goes."""
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy") or ""
        if not spy:
            log.warning("  --profile: py-spy is not installed (pip install py-spy); skipped")
            return
        directory.mkdir(parents=True, exist_ok=True)
        seconds = max(2, round(self.timing.seconds))
        outputs = [directory / f"{load.name}-c{concurrency}-{pid}.txt" for pid in self.workers()]
        spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "--gil",
                                   "--threads", "-f", "raw", "-o", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, out in zip(self.workers(), outputs)]
        self.wrk(load, concurrency, seconds=seconds + 1, tag="-profiled")
        for proc in spies:
            proc.wait(timeout=60)
        load.cleanup()
        summary = directory / f"summary-{load.name}-c{concurrency}.txt"
        summary.write_text(profile_summary([o for o in outputs if o.is_file()]), encoding="utf-8")
        log.info("  profile of %s at c=%d written to %s", load.name, concurrency, summary)


def hem_filler(token: Any, count: int, threads: int = 4) -> float:
    """Create ``count`` AES-256 keys with HEM metadata labels through the adapter; seconds taken."""
    from gateway.core.hem.meta import KeyMeta
    from gateway.core.hem.types import KeyType
    from gateway.token import SecretSpec, SecretType, Usage

    now = int(time.time())
    label = KeyMeta(FILLER_MARKER, KeyType.AES256, (), now, now).encode()

    def create(_: int) -> None:
        token.generate_secret(SecretSpec(os.urandom(16), label, SecretType.AES, 32, Usage(encrypt=True)))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))
    return time.perf_counter() - started


def run_gateway(tokens: GatewayTokens, timing: GatewayTiming, workdir: Path, cases: tuple[str, ...],
                profile: Path | None = None) -> GatewayRun:
    """Every requested gateway case, in one gateway process tree (restarted for the memory case)."""
    from gateway.token import Token

    result = GatewayRun(workers=timing.workers, sessions=timing.sessions, log_level=timing.log_level)
    if wrk.available() is None:
        result.skipped.append("gateway cases: wrk is not installed (apt-get install wrk; `make bench` does)")
        return result
    bench = GatewayBench(tokens, timing, workdir)
    adapter: Token | None = None
    try:
        loads: list[Workload] = []
        if HEM_DERIVE in cases:
            loads.append(bench.hem_derive())
        if HEM_ECDH in cases:
            loads.append(bench.hem_ecdh())
        if VAULT_DERIVE in cases:
            if bench.raw_nss is None:
                result.skipped.append(f"{VAULT_DERIVE}: no NSS softoken")
            else:
                loads.append(bench.vault_derive())
        for load in loads:
            log.info("%s (%s on %s):", load.name, load.route, load.token)
            result.cases.append(bench.run_case(load))
            if profile is not None:
                bench.profile(load, 16, profile)
        # Memory before scale: with 10,000 keys in the token each worker's SoftHSM2 holds them all in memory.
        if MEMORY in cases:
            log.info("%s (worker RSS after %s requests):", MEMORY, " and ".join(f"{n:,}" for n in timing.memory))
            result.memory = bench.run_memory()
        if SCALE in cases:
            log.info("%s (HEM derive with %d and %d key objects in the token):", SCALE, *timing.scale_levels)
            adapter = Token(tokens.softhsm.settings)
            token = adapter
            result.scale = bench.run_scale(lambda n: hem_filler(token, n))
    finally:
        result.cpu = dict(bench.cpu)
        if adapter is not None:
            adapter.close()
        bench.close()
    return result
