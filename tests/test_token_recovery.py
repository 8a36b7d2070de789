"""Sessions, login and the module itself taken away mid-run: the adapter recovers."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import TokenUnavailable
from gateway.token import Curve, SecretSpec, SecretType, Token, Usage

T = TypeVar("T")


def _base(token: Token) -> tuple[bytes, bytes, bytes]:
    base = os.urandom(16)
    info = token.generate_keypair(base, "recovery", Curve.P256, Usage(derive=True))
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_pub = peer.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    z = peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), info.public_key))
    return base, peer_pub, z


class _Gate:
    """Workers hold it shared around each call; the saboteur holds it alone.

    SoftHSM2 frees a session's state in C_CloseAllSessions even while another
    thread is inside a call on that session (a use-after-free that can abort
    the process), so "closed from outside mid-run" means between calls: the
    pooled sessions die under the workers' feet, and every next call must
    find out and recover.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False

    def enter(self) -> None:
        with self._cond:
            while self._closing:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def exclusive(self, action: "Callable[[], object]") -> None:
        with self._cond:
            self._closing = True
            while self._active:
                self._cond.wait()
            try:
                action()
            finally:
                self._closing = False
                self._cond.notify_all()


def test_all_sessions_closed_from_outside_mid_run(softhsm_recovery_token: Token) -> None:
    token = softhsm_recovery_token
    base, peer, z = _base(token)
    stop = threading.Event()
    gate = _Gate()
    closes = 0

    def saboteur() -> None:
        nonlocal closes
        while not stop.is_set() and closes < 5:
            time.sleep(0.05)
            gate.exclusive(lambda: token.module.fn.raw("C_CloseAllSessions")(token.pool.slot))
            closes += 1

    def call(fn: "Callable[[], T]") -> "T":
        gate.enter()
        try:
            return fn()
        finally:
            gate.leave()

    def worker(_: int) -> list[bytes]:
        out = []
        for i in range(150):
            assert call(lambda: token.ecdh_secret(base, peer=peer)) == z
            if i % 30 == 0:
                kid = os.urandom(16)
                call(lambda: token.ecdh_derive(base, SecretSpec(kid, "r", SecretType.AES, 32), peer=peer))
                out.append(kid)
        return out

    before = token.counters["recoveries"]
    thread = threading.Thread(target=saboteur)
    thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            created = [k for chunk in pool.map(worker, range(4)) for k in chunk]
    finally:
        stop.set()
        thread.join()
    assert closes >= 1 and token.counters["recoveries"] > before
    assert token.pool_stats().in_use == 0
    for kid in created:  # every derive that answered exists
        assert token.get_key(kid).secret_type is SecretType.AES


def test_login_dropped_from_outside(softhsm_recovery_token: Token) -> None:
    token = softhsm_recovery_token
    base, peer, z = _base(token)
    session = token.pool.acquire()
    token.module.fn.raw("C_Logout")(session.handle)
    token.pool.release(session)
    # private objects are invisible when logged out: this must not read as "not found"
    assert token.ecdh_secret(base, peer=peer) == z
    assert token.get_key(base).curve is Curve.P256


def test_module_finalized_from_outside(softhsm_recovery_token: Token) -> None:
    token = softhsm_recovery_token
    base, peer, z = _base(token)
    token.module.fn.raw("C_Finalize")(None)
    assert token.ecdh_secret(base, peer=peer) == z
    assert token.capabilities.ecdh_curves  # detected again after the reconnect
    iv = os.urandom(12)
    kid = os.urandom(16)
    token.generate_secret(SecretSpec(kid, "after", SecretType.AES, 32))
    assert len(token.aes_gcm(kid, iv, b"abc")) == 19


def test_unrecoverable_token_is_a_typed_error(softhsm_spare_token: Token) -> None:
    """When sessions go and the login cannot be re-established, callers get a typed
    'token unavailable' error; once the cause is fixed the token serves again."""
    from dataclasses import replace

    token = softhsm_spare_token
    good = token.settings
    token.pool._pin = b"wrong-pin"  # as if the PIN was changed behind the gateway's back
    token.module.fn.raw("C_CloseAllSessions")(token.pool.slot)
    with pytest.raises(TokenUnavailable) as err:
        token.random(8)
    assert "PIN" in str(err.value) or "unavailable" in str(err.value)
    assert "wrong-pin" not in str(err.value)
    assert token.is_ready() is False
    token.pool._pin = good.pin.encode()  # type: ignore[union-attr]
    assert len(token.random(8)) == 8
    assert token.is_ready() is True
    assert replace(good) == token.settings
