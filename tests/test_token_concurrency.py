"""Many threads on one token: no crash, no error, every result right.

SoftHSM2 crashes under threads when initialised with C_Initialize(NULL); the
adapter passes CKF_OS_LOCKING_OK, which this test relies on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.token import Curve, SecretSpec, SecretType, Token, Usage

THREADS = 8


def _peers(count: int) -> list[tuple[ec.EllipticCurvePrivateKey, bytes]]:
    out = []
    for _ in range(count):
        priv = ec.generate_private_key(ec.SECP256R1())
        out.append((priv, priv.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)))
    return out


@pytest.mark.parametrize("per_thread", [200])
def test_threads_derive_on_softhsm(softhsm_concurrency_token: Token, per_thread: int) -> None:
    _run(softhsm_concurrency_token, per_thread, stored_every=10)


def test_threads_derive_on_nss(nss_token: Token) -> None:
    _run(nss_token, 50, stored_every=10)


def _run(token: Token, per_thread: int, stored_every: int) -> None:
    base = os.urandom(16)
    info = token.generate_keypair(base, "concurrency-base", Curve.P256, Usage(derive=True))
    token_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), info.public_key)
    peers = _peers(16)
    expected = [priv.exchange(ec.ECDH(), token_pub) for priv, _ in peers]

    def worker(n: int) -> tuple[int, int, list[bytes]]:
        ok = stored = 0
        created: list[bytes] = []
        for i in range(per_thread):
            idx = (n * per_thread + i) % len(peers)
            if i % stored_every == 0:
                out = os.urandom(16)
                token.ecdh_derive(base, SecretSpec(out, "c", SecretType.AES, 32), peer=peers[idx][1])
                created.append(out)
                stored += 1
            elif token.ecdh_secret(base, peer=peers[idx][1]) == expected[idx]:
                ok += 1
        return ok, stored, created

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    total_ok = sum(r[0] for r in results)
    total_stored = sum(r[1] for r in results)
    assert total_ok + total_stored == THREADS * per_thread
    created = [k for r in results for k in r[2]]
    assert len(set(created)) == total_stored
    listed = {k.kid for k in token.list_keys()}
    assert set(created) <= listed
    stats = token.pool_stats()
    assert stats.in_use == 0 and stats.open <= token.settings.sessions
    for out in created:
        token.destroy(out)


async def test_nss_object_writes_queue_on_one_thread_and_reads_stay_parallel(nss_settings) -> None:  # type: ignore[no-untyped-def]
    # NSS softoken stores objects one at a time; racing writers only lengthen the tail (docs/benchmarks.md).
    import asyncio
    import threading
    import time

    token = Token(nss_settings)
    active = {"generate_secret": 0, "find_key": 0}
    peak = dict(active)
    threads: dict[str, set[str]] = {"generate_secret": set(), "find_key": set()}
    lock = threading.Lock()

    def tracked(name: str, call):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            with lock:
                active[name] += 1
                peak[name] = max(peak[name], active[name])
                threads[name].add(threading.current_thread().name)
            try:
                time.sleep(0.05)  # long enough for calls to overlap if they can
                return call(*args)
            finally:
                with lock:
                    active[name] -= 1
        run.__name__ = name  # Token.run routes by the adapter method's name
        return run

    try:
        kid = os.urandom(16)
        spec = lambda k: SecretSpec(k, "queued", SecretType.AES, 32, Usage(encrypt=True))  # noqa: E731
        await asyncio.gather(*(token.run(tracked("generate_secret", token.generate_secret), spec(os.urandom(16)))
                               for _ in range(6)),
                             *(token.run(tracked("find_key", token.find_key), kid) for _ in range(6)))
    finally:
        token.close()
    assert peak["generate_secret"] == 1 and all("-writer_" in t for t in threads["generate_secret"])
    assert peak["find_key"] > 1 and not any("-writer_" in t for t in threads["find_key"])
