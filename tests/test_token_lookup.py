"""Lookup by kid with thousands of stored keys, and other processes changing the token.

SoftHSM2's C_FindObjects scans every object (~22 us each), so a lookup that
scanned would grow with the key count.  The adapter caches handles and
confirms them with one attribute read; this test counts object scans (a
machine-independent measure) instead of timing anything.  ``make bench``
reports the timings.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.errors import NotFound
from gateway.token import SecretSpec, SecretType, Token, TokenSettings

STORED = 2000


@pytest.fixture(scope="module")
def stored_kids(softhsm_lookup_token: Token) -> list[bytes]:
    token = softhsm_lookup_token
    kids = [os.urandom(16) for _ in range(STORED)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: token.generate_secret(SecretSpec(k, "lookup", SecretType.AES, 32)), kids))
    return kids


def test_lookups_do_not_scan_with_2000_keys(softhsm_lookup_token: Token, stored_kids: list[bytes]) -> None:
    token = softhsm_lookup_token
    assert len(token.list_keys()) >= STORED
    iv = os.urandom(12)
    sample = random.sample(stored_kids, 300)
    # a fresh process-local view: forget everything, then warm up with one pass
    for k in stored_kids:
        token._forget(k)
    before = token.counters["find_objects"]
    started = time.perf_counter()
    for k in sample:
        token.aes_gcm(k, iv, b"x")
    cold = time.perf_counter() - started
    assert token.counters["find_objects"] - before == len(sample)  # one scan per key, on first use only
    before = token.counters["find_objects"]
    started = time.perf_counter()
    for _ in range(3):
        for k in sample:
            token.aes_gcm(k, iv, b"x")
            token.get_key(k)
    warm = (time.perf_counter() - started) / 3
    assert token.counters["find_objects"] == before, "warm lookups must not scan the token"
    print(f"\n{STORED} keys: first use {cold / len(sample) * 1e3:.2f} ms/key, later {warm / len(sample) / 2 * 1e3:.3f} ms/op")


def _other_process(settings: TokenSettings, code: str) -> None:
    script = textwrap.dedent(f"""
        import sys
        from gateway.token import Token, TokenSettings, SecretSpec, SecretType
        token = Token(TokenSettings(name="other", module={settings.module!r}, label={settings.label!r},
                                    pin={settings.pin!r}, environment={settings.environment!r}))
        {code}
        token.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ.copy(), timeout=60)


def test_other_process_creates_and_destroys(softhsm_lookup_token: Token, stored_kids: list[bytes]) -> None:
    token = softhsm_lookup_token
    victim = stored_kids[0]
    iv = os.urandom(12)
    token.aes_gcm(victim, iv, b"x")  # cached handle
    _other_process(token.settings, f"token.destroy({victim!r})")
    with pytest.raises(NotFound):
        token.aes_gcm(victim, iv, b"x")
    with pytest.raises(NotFound):
        token.get_key(victim)
    fresh = os.urandom(16)
    with pytest.raises(NotFound):
        token.get_key(fresh)
    _other_process(token.settings, f"token.generate_secret(SecretSpec({fresh!r}, 'other', SecretType.AES, 32))")
    assert token.get_key(fresh).label == "other"
    assert len(token.aes_gcm(fresh, iv, b"x")) == 17
