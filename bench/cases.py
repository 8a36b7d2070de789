"""The measured cases: adapter calls on one side, the raw worker on the other.

The adapter is driven by plain threads calling its sync methods (what
``await token.run(...)`` does on the gateway's worker threads, minus the
event loop), so the figures show the adapter's own cost.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.baseline import RawWorker
from bench.results import DeriveResult, LookupOp, LookupResult
from bench.timing import Sample, timed_loop
from gateway.token import Curve, SecretSpec, SecretType, Token, Usage

log = logging.getLogger("bench")

DERIVE_STORE = "derive-and-store"
DERIVE_SESSION = "derive-session"
LOOKUP = "lookup"
DERIVE_CASES = (DERIVE_STORE, DERIVE_SESSION)
ADAPTER_CASES = (*DERIVE_CASES, LOOKUP)
STORE_LABEL = "bench-store"


@dataclass(frozen=True)
class Timing:
    seconds: float  # measuring window per variant
    rounds: int
    threads: tuple[int, ...]


def software_peer() -> bytes:
    """A P-256 peer public key as an uncompressed point (what a client would send)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def make_base_key(token: Token) -> bytes:
    kid = os.urandom(16)
    token.generate_keypair(kid, "bench-base", Curve.P256, Usage(derive=True))
    return kid


def adapter_op(token: Token, case: str, base: bytes, peer: bytes) -> Callable[[int], object]:
    if case == DERIVE_STORE:
        return lambda _: token.ecdh_derive(
            base, SecretSpec(os.urandom(16), STORE_LABEL, SecretType.AES, 32, Usage(encrypt=True)), peer=peer)
    # No adapter call derives a session object and drops it, so compare the
    # one that comes closest: ecdh_secret (derive, read CKA_VALUE, destroy).
    return lambda _: token.ecdh_secret(base, peer=peer)


def run_derive_case(
    token: Token, raw: RawWorker, case: str, base: bytes, peer: bytes, timing: Timing, *, with_floor: bool = True
) -> DeriveResult:
    result = DeriveResult(token=token.name, case=case, adapter={t: [] for t in timing.threads})
    op = adapter_op(token, case, base, peer)
    raw_op = "derive_store" if case == DERIVE_STORE else "derive_session"
    raw_args = {"base_kid": base.hex(), "peer": peer.hex(), "label": STORE_LABEL}

    def cleanup() -> None:
        # Every variant starts from the same object count (SoftHSM2 slows as files accumulate).
        if case == DERIVE_STORE:
            raw.call("cleanup", label=STORE_LABEL)

    def measure_raw(rnd: int) -> None:
        sample = raw.sample(raw_op, seconds=timing.seconds, **raw_args)
        result.raw.append(sample)
        log.info("  %-8s %-17s round %d  raw      1 thread : %8.1f ops/s", token.name, case, rnd + 1, sample.ops_per_s)
        cleanup()
        if with_floor:
            sample = raw.sample(raw_op + "_floor", seconds=timing.seconds, **raw_args)
            result.floor.append(sample)
            log.info("  %-8s %-17s round %d  floor    1 thread : %8.1f ops/s", token.name, case, rnd + 1,
                     sample.ops_per_s)
            cleanup()

    def measure_adapter(threads: int, rnd: int) -> None:
        sample = timed_loop(op, threads=threads, seconds=timing.seconds)
        result.adapter[threads].append(sample)
        log.info("  %-8s %-17s round %d  adapter %2d thread%s: %8.1f ops/s", token.name, case, rnd + 1,
                 threads, "s" if threads > 1 else " ", sample.ops_per_s)
        cleanup()

    variants: list[Callable[[int], None]] = [measure_raw, *(functools.partial(measure_adapter, t) for t in timing.threads)]
    for rnd in range(timing.rounds):
        # Rotate the order from round to round, so a drift or a burst of
        # machine load does not always hit the same variant.
        shift = rnd % len(variants)
        for measure in variants[shift:] + variants[:shift]:
            measure(rnd)
    return result


# -- lookup cost at a small and a large number of stored keys ------------------

LOOKUP_LABEL = "bench-lookup"


def _create_keys(token: Token, count: int, threads: int) -> list[bytes]:
    kids = [os.urandom(16) for _ in range(count)]

    def create(kid: bytes) -> None:
        token.generate_secret(SecretSpec(kid, LOOKUP_LABEL, SecretType.AES, 32, Usage(encrypt=True)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, kids))
    return kids


def run_lookup_case(
    token: Token,
    raw: RawWorker,
    levels: tuple[int, int],
    timing: Timing,
    *,
    create_threads: int = 4,
    raw_max_ops: int = 25,
) -> LookupResult:
    """Per-op lookup cost with ``levels[0]`` and then ``levels[1]`` key objects in the token.

    The token holds one EC key pair (for the derive rows) plus AES keys, so
    its object count is exactly the level.  The adapter's rows use kids it
    has seen (cached handles); the raw rows find the key with C_FindObjects
    every time, as python-pkcs11's ``session.get_key(id=...)`` does.
    """
    low, high = levels
    result = LookupResult(token=token.name, levels=levels, create_threads=create_threads)
    base = make_base_key(token)  # 2 objects
    peer = software_peer()
    kids = _create_keys(token, max(low - 2, 1), create_threads)
    iv, data = os.urandom(12), os.urandom(64)

    rows: list[tuple[str, str, str]] = [
        ("adapter get_key", "adapter", "get_key(kid), cached handle"),
        ("raw get_key", "raw", "session.get_key(id=...): C_FindObjects scan"),
        ("adapter aes-gcm", "adapter", "aes_gcm(kid, ...) of 64 bytes, cached handle"),
        ("raw get_key + aes-gcm", "raw", "get_key(id=...) then encrypt 64 bytes with AES-GCM"),
        ("adapter derive-session", "adapter", "ecdh_secret(base kid, peer)"),
        ("raw derive-session", "raw", "derive_key (session object), read, destroy"),
    ]
    result.ops = [LookupOp(name, runner, what) for name, runner, what in rows]

    def measure(level: int, sample_kids: Sequence[bytes]) -> None:
        counter = [0]

        def pick(_: int) -> bytes:
            counter[0] += 1
            return sample_kids[counter[0] % len(sample_kids)]

        hexkids = [k.hex() for k in sample_kids]
        s = timing.seconds
        plan: list[tuple[str, Callable[[], Sample]]] = [
            ("adapter get_key", lambda: timed_loop(lambda i: token.get_key(pick(i)), seconds=s)),
            ("raw get_key", lambda: raw.sample("lookup", kids=hexkids, seconds=s, max_ops=raw_max_ops, warmup=1)),
            ("adapter aes-gcm", lambda: timed_loop(lambda i: token.aes_gcm(pick(i), iv, data), seconds=s)),
            ("raw get_key + aes-gcm", lambda: raw.sample("lookup", kids=hexkids, use="aes_gcm", seconds=s,
                                                         max_ops=raw_max_ops, warmup=1)),
            ("adapter derive-session", lambda: timed_loop(lambda i: token.ecdh_secret(base, peer=peer), seconds=s)),
            ("raw derive-session", lambda: raw.sample("derive_session", base_kid=base.hex(), peer=peer.hex(), seconds=s)),
        ]
        for name, run in plan:
            sample = run()
            result.op(name).at[level] = sample
            log.info("  %-8s %6d keys  %-24s %9.3f ms/op", token.name, level, name, sample.mean_ms)

    rng = random.Random(1)
    measure(low, kids)
    log.info("  %s: creating %d more keys with %d adapter threads ...", token.name, high - low, create_threads)
    started = time.perf_counter()
    more = _create_keys(token, high - low, create_threads)
    result.create_seconds = time.perf_counter() - started
    result.created = len(more)
    log.info("  %s: %d keys in %.1f s (%.0f keys/s)", token.name, len(more), result.create_seconds,
             len(more) / result.create_seconds)
    all_kids = kids + more
    measure(high, rng.sample(all_kids, min(len(all_kids), 1000)))
    return result
