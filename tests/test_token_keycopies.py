"""ECDH base keys used through per-process session copies on SoftHSM2 (gateway/token/keycopies.py).

What must hold: the copy derives what the token object would (checked against software ECDH
through the derived key in the token); it is never a token object; a key deleted through any
gateway process is refused by every other process at once, and one deleted by another program
within ``TRUST_SECONDS``; sessions closed from outside cost a new copy, not an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import NotFound
from gateway.token import Curve, SecretSpec, SecretType, Token, Usage
from gateway.token import keycopies
from gateway.token.constants import CKA
from gateway.token import token as token_module
from gateway.token.keycopies import DeletionCounter
from tests.test_token_primitives import gcm_roundtrip, software_peer, software_z
from tests.tokens import SOFTHSM_MODULE, SOFTHSM_PIN

REPO = Path(__file__).resolve().parent.parent

# Another gateway process deleting a key: the adapter, in a process of its own.
_GATEWAY_DELETE = """
import os, sys
from gateway.token import Token, TokenSettings
token = Token(TokenSettings(name="other", module=sys.argv[1], label="keycopies", pin=os.environ["PIN"],
                            environment={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}))
print(token.destroy(bytes.fromhex(sys.argv[2])))
token.close()
"""

# Another program deleting a key: python-pkcs11, which knows nothing of the gateway.
_FOREIGN_DELETE = """
import os, sys
import pkcs11
from pkcs11 import Attribute
lib = pkcs11.lib(sys.argv[1])
with lib.get_token(token_label="keycopies").open(rw=True, user_pin=os.environ["PIN"]) as session:
    for obj in session.get_objects({Attribute.ID: bytes.fromhex(sys.argv[2])}):
        obj.destroy()
"""


@pytest.fixture(autouse=True)
def copy_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies from a key's first use (the gateway waits COPY_AFTER_SECONDS; see the last test)."""
    monkeypatch.setattr(token_module, "COPY_AFTER_SECONDS", 0.0)


@pytest.fixture(scope="module")
def hsm(softhsm_settings) -> Iterator[Token]:  # type: ignore[no-untyped-def]
    token = Token(softhsm_settings("keycopies"))
    yield token
    token.close()


def _other_process(script: str, hsm: Token, kid: bytes) -> None:
    env = {**os.environ, "SOFTHSM2_CONF": hsm.settings.environment["SOFTHSM2_CONF"], "PIN": SOFTHSM_PIN}
    subprocess.run([sys.executable, "-c", script, SOFTHSM_MODULE, kid.hex()], cwd=REPO, env=env, check=True,
                   timeout=60, capture_output=True)


def _base(hsm: Token) -> tuple[bytes, dict[str, bytes], bytes]:
    base = os.urandom(16)
    info = hsm.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    assert info.public_key is not None
    return base, forms, software_z(Curve.P256, priv, info.public_key)


def _derive(hsm: Token, base: bytes, peer: bytes) -> bytes:
    out = os.urandom(16)
    hsm.ecdh_derive(base, SecretSpec(out, "copies", SecretType.AES, 32), peer=peer)
    return out


def _token_objects(hsm: Token) -> int:
    return len(hsm.list_keys())


def test_softhsm_derives_from_one_session_copy_with_the_token_objects_result(hsm: Token) -> None:
    assert hsm._key_copies is not None
    base, forms, z = _base(hsm)
    keys_before = _token_objects(hsm)
    copies_before = hsm.counters["key_copies"]
    outs = [_derive(hsm, base, forms["uncompressed"]) for _ in range(5)]
    assert hsm.counters["key_copies"] == copies_before + 1  # one copy served all five
    for out in outs:
        gcm_roundtrip(hsm, out, z[-32:])  # CKD_NULL keeps the last bytes of Z
    assert hsm.ecdh_secret(base, peer=forms["uncompressed"]) == z
    # The copy is no token object: only the five derived keys were added.
    assert _token_objects(hsm) == keys_before + 5
    # And it guards the key as the token object does.
    copy = hsm._key_copies._copies[base].handle
    session = hsm.pool.acquire()
    try:
        attrs = hsm._attrs(session.handle, copy, (CKA.TOKEN, CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.ID))
    finally:
        hsm.pool.release(session)
    assert attrs[CKA.TOKEN] == b"\x00" and attrs[CKA.SENSITIVE] == b"\x01" and attrs[CKA.EXTRACTABLE] == b"\x00"
    assert attrs[CKA.ID] == base
    for out in outs:
        hsm.destroy(out)
    hsm.destroy(base)


def test_a_key_deleted_by_another_gateway_process_is_refused_at_once(hsm: Token,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keycopies, "TRUST_SECONDS", 3600.0)  # only the shared count may tell
    base, forms, _ = _base(hsm)
    hsm.destroy(_derive(hsm, base, forms["uncompressed"]))  # the copy exists and is confirmed
    counter = hsm.module.deletions
    assert counter is not None
    before = counter.value()
    _other_process(_GATEWAY_DELETE, hsm, base)
    assert counter.value() > before
    with pytest.raises(NotFound):
        _derive(hsm, base, forms["uncompressed"])
    with pytest.raises(NotFound):
        hsm.ecdh_secret(base, peer=forms["uncompressed"])


def test_a_key_deleted_by_another_program_is_refused_within_the_trust_window(hsm: Token,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keycopies, "TRUST_SECONDS", 0.5)
    base, forms, _ = _base(hsm)
    hsm.destroy(_derive(hsm, base, forms["uncompressed"]))
    _other_process(_FOREIGN_DELETE, hsm, base)
    time.sleep(0.6)
    with pytest.raises(NotFound):
        _derive(hsm, base, forms["uncompressed"])


def test_sessions_closed_from_outside_cost_a_new_copy_not_an_error(hsm: Token) -> None:
    base, forms, z = _base(hsm)
    hsm.destroy(_derive(hsm, base, forms["uncompressed"]))
    copies_before = hsm.counters["key_copies"]
    hsm.module.fn("C_CloseAllSessions", hsm.pool.slot)  # every session object goes, the copy too
    out = _derive(hsm, base, forms["uncompressed"])
    assert hsm.counters["key_copies"] == copies_before + 1
    gcm_roundtrip(hsm, out, z[-32:])
    hsm.destroy(out)
    hsm.destroy(base)


def test_copies_are_bounded_and_evicted_ones_destroyed(hsm: Token, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hsm._key_copies is not None
    monkeypatch.setattr(hsm._key_copies, "limit", 2)
    bases = [_base(hsm) for _ in range(4)]
    for base, forms, _ in bases:
        hsm.destroy(_derive(hsm, base, forms["uncompressed"]))
    assert len(hsm._key_copies) == 2
    # The last copy made destroyed the one evicted before it; one evicted copy waits for the next.
    assert len(hsm._key_copies.take_dead(hsm.pool.generation)) <= 1
    for base, _, _ in bases:
        hsm.destroy(base)


def test_nss_gets_no_copies(nss_token: Token) -> None:
    assert nss_token.module.deletions is None and nss_token._key_copies is None


def test_the_deletion_counter_is_shared_through_its_file(tmp_path: Path) -> None:
    one, two = DeletionCounter(tmp_path / "d"), DeletionCounter(tmp_path / "d")
    assert one.value() == two.value() == 0
    one.bump()
    two.bump()
    assert one.value() == two.value() == 2
    one.close()
    two.close()


def test_a_key_just_made_is_used_as_the_token_object_until_it_is_known_a_while(hsm: Token,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_module, "COPY_AFTER_SECONDS", 0.5)
    base, forms, z = _base(hsm)
    copies_before = hsm.counters["key_copies"]
    hsm.destroy(_derive(hsm, base, forms["uncompressed"]))
    assert hsm.counters["key_copies"] == copies_before  # known for less than 0.5 s: no copy
    time.sleep(0.6)
    out = _derive(hsm, base, forms["uncompressed"])
    assert hsm.counters["key_copies"] == copies_before + 1
    gcm_roundtrip(hsm, out, z[-32:])
    hsm.destroy(out)
    hsm.destroy(base)


def test_a_counter_that_cannot_be_opened_means_no_copies_and_says_how_to_fix_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(keycopies, "softhsm_shared_path", lambda environment, suffix: tmp_path / "no" / "such")
    with caplog.at_level("WARNING", logger="gateway.token"):
        assert DeletionCounter.for_softhsm({}) is None
    assert "cannot open the deletion counter" in caplog.text and "as one user" in caplog.text
