"""Keys another process made are never reported missing (gateway/token/staleview.py).

SoftHSM2 2.6 hides objects another process created from a process that has
since created or destroyed an object itself: it takes the token's change
counter, other processes' increments included, as seen without reading the
token folder again.  The adapter counts its own object-changing calls and,
when a lookup finds nothing after one, has a fresh process nudge the token and
looks again.  "Another process" here is a child Python process with its own
adapter; the key it imports has a known value, so the serving process's use of
it is checked in software.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.token import SecretSpec, SecretType, Token, Usage

LABEL = "staleview"

_OTHER_PROCESS = """
import json, sys
from gateway.token import SecretSpec, SecretType, Token, TokenSettings, Usage
job = json.loads(sys.stdin.read())
token = Token(TokenSettings(**job["settings"]))
try:
    spec = SecretSpec(bytes.fromhex(job["kid"]), "made elsewhere", SecretType.AES, 32, Usage(encrypt=True))
    token.import_secret(spec, bytes.fromhex(job["value"]))
finally:
    token.close()
"""


@pytest.fixture(scope="module")
def stale_token(softhsm_settings) -> Iterator[Token]:  # type: ignore[no-untyped-def]
    token = Token(softhsm_settings(LABEL, sessions=4))
    token.stale.list_seconds = 0.0  # every listing may catch up (the service waits 5 s between)
    yield token
    token.close()


def _import_elsewhere(token: Token, kid: bytes, value: bytes) -> None:
    job = {"settings": dataclasses.asdict(token.settings), "kid": kid.hex(), "value": value.hex()}
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS], input=json.dumps(job), text=True, check=True, timeout=120)


def _own_write(token: Token) -> None:
    token.generate_secret(SecretSpec(os.urandom(16), "own", SecretType.AES, 32, Usage(encrypt=True)))


def _usable(token: Token, kid: bytes, value: bytes) -> bool:
    iv, message = os.urandom(12), os.urandom(40)
    sealed = token.aes_gcm(kid, iv, message)
    return AESGCM(value).decrypt(iv, sealed, None) == message


def test_a_key_made_elsewhere_is_found_after_an_own_write(stale_token: Token, capsys: pytest.CaptureFixture[str]) -> None:
    token = stale_token
    assert token.find_key(os.urandom(16)) is None  # this process has read the token folder
    kid, value = os.urandom(16), os.urandom(32)
    _import_elsewhere(token, kid, value)
    _own_write(token)  # SoftHSM2 now counts the other process's import as seen

    hidden = token.find_key(kid, fresh=False) is None
    nudges = token.stale.nudges
    info = token.find_key(kid)

    assert info is not None and info.label == "made elsewhere"
    assert _usable(token, kid, value)
    assert token.stale.nudges == nudges + (1 if hidden else 0)
    with capsys.disabled():
        print(f"\n  staleview: the key was {'hidden' if hidden else 'visible'} without catching up; nudges {token.stale.nudges}")


def test_a_miss_with_a_current_view_costs_no_child_process(stale_token: Token) -> None:
    token = stale_token
    _own_write(token)
    assert token.find_key(os.urandom(16)) is None  # catches up once
    assert token.stale.current
    nudges = token.stale.nudges
    for _ in range(5):
        assert token.find_key(os.urandom(16)) is None
    assert token.stale.nudges == nudges


def test_a_listing_shows_keys_made_elsewhere(stale_token: Token) -> None:
    token = stale_token
    token.list_keys()
    kid, value = os.urandom(16), os.urandom(32)
    _import_elsewhere(token, kid, value)
    _own_write(token)

    assert kid in {k.kid for k in token.list_keys()}
    assert _usable(token, kid, value)


def test_an_import_under_a_kid_made_elsewhere_is_refused(stale_token: Token) -> None:
    from gateway.errors import AlreadyExists

    token = stale_token
    kid, value = os.urandom(16), os.urandom(32)
    _import_elsewhere(token, kid, value)
    _own_write(token)

    with pytest.raises(AlreadyExists):
        token.import_secret(SecretSpec(kid, "second copy", SecretType.AES, 32, Usage(encrypt=True)), os.urandom(32))
    assert _usable(token, kid, value)  # the first one stays, alone
    assert [k.kid for k in token.list_keys()].count(kid) == 1


def test_nss_never_needs_catching_up(nss_settings) -> None:  # type: ignore[no-untyped-def]
    # NSS softoken asks its database on every lookup: a miss after an own write spawns nothing.
    token = Token(nss_settings)
    try:
        _own_write(token)
        assert token.find_key(os.urandom(16)) is None
        assert token.stale.current and token.stale.nudges == 0
    finally:
        token.close()
