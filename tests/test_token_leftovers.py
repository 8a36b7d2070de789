"""Failed creating calls leave nothing in the token (gateway/token/leftovers.py).

SoftHSM2 can fail a C_DeriveKey half-way when its token folder turns read-only
and keep the new object's file, which the failing process no longer sees.  The
adapter sweeps the kids of failed creating calls from a fresh process.  The
token is inspected from outside with opensc's ``pkcs11-tool`` (its own process,
so its own view of the files).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import GatewayError
from gateway.token import Curve, SecretSpec, SecretType, Token, Usage
from gateway.token.leftovers import sweep
from tests.stress.support import chattr_supported
from tests.tokens import SOFTHSM_MODULE, SOFTHSM_PIN

LABEL = "leftovers"
FAULT_SECONDS = 25.0  # at most; stops at the first leftover swept


@pytest.fixture(scope="module")
def leftovers_token(softhsm_settings) -> Iterator[Token]:  # type: ignore[no-untyped-def]
    token = Token(softhsm_settings(LABEL, sessions=4))
    yield token
    token.close()


def _ids_seen_from_outside(softhsm_dir: Path) -> list[str]:
    """CKA_IDs (hex) of the token's objects as pkcs11-tool lists them."""
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm_dir / "softhsm2.conf")}
    proc = subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", LABEL, "--login",
                           "--pin", SOFTHSM_PIN, "--list-objects"], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    return [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.strip().startswith("ID:")]


def _token_folder(softhsm_dir: Path) -> Path:
    padded = LABEL.encode().ljust(32, b" ")
    (folder,) = (p for p in (softhsm_dir / "tokens").iterdir() if padded in (p / "token.object").read_bytes())
    return folder


def _peer() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def test_sweep_destroys_what_a_kid_left_and_reports_absent_kids(leftovers_token: Token, softhsm_dir: Path) -> None:
    kid, never = os.urandom(16), os.urandom(16)
    leftovers_token.generate_secret(SecretSpec(kid, "left over", SecretType.AES, 32, Usage(encrypt=True)))
    assert kid.hex() in _ids_seen_from_outside(softhsm_dir)

    result = sweep(leftovers_token.settings, [kid, never])

    assert (result.destroyed, result.absent, result.failed) == ([kid.hex()], [never.hex()], [])
    assert kid.hex() not in _ids_seen_from_outside(softhsm_dir)
    assert leftovers_token.find_key(kid) is None  # the serving process sees the removal too


def test_sweep_of_a_token_that_cannot_be_reached_raises(leftovers_token: Token) -> None:
    from dataclasses import replace

    wrong = replace(leftovers_token.settings, label="no-such-token")
    with pytest.raises(RuntimeError, match="no token with label 'no-such-token'"):
        sweep(wrong, [os.urandom(16)])


def test_failed_derives_leave_nothing_when_the_token_folder_turns_read_only(
        leftovers_token: Token, softhsm_dir: Path, tmp_path: Path) -> None:
    if not chattr_supported(tmp_path):
        pytest.skip("needs chattr +i (root, and a file system with the immutable attribute)")
    token = leftovers_token
    base = os.urandom(16)
    token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    peer = _peer()
    folder = _token_folder(softhsm_dir)
    made: list[str] = []
    failed: list[str] = []
    errors: Counter[str] = Counter()
    stop = threading.Event()

    def derive() -> None:
        while not stop.is_set():
            kid = os.urandom(16)
            try:
                token.ecdh_derive(base, SecretSpec(kid, "derived", SecretType.AES, 32, Usage(encrypt=True)), peer=peer)
                made.append(kid.hex())
            except GatewayError as exc:
                failed.append(kid.hex())
                errors[exc.message] += 1

    threads = [threading.Thread(target=derive) for _ in range(4)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    flips = 0
    try:
        # Flip the folder read-only and back until a derive has failed half-way (SoftHSM2 answers
        # CKR_FUNCTION_FAILED then) and its leftover was swept, or time is up.
        while time.monotonic() - started < FAULT_SECONDS and token.leftovers.destroyed == 0:
            time.sleep(0.3)
            subprocess.run(["chattr", "-R", "+i", str(folder)], check=True, capture_output=True)
            time.sleep(0.5)
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True, capture_output=True)
            flips += 1
            time.sleep(0.8)  # the sweep's first try comes 0.5 s after a failure
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        subprocess.run(["chattr", "-R", "-i", str(folder)], check=True, capture_output=True)

    assert failed, f"no derive failed in {flips} read-only periods"
    assert token.leftovers.wait_settled(60), f"{token.leftovers.pending} failed derives not swept"
    outside = set(_ids_seen_from_outside(softhsm_dir))
    inside = {k.kid.hex() for k in token.list_keys()}
    # SoftHSM2 itself can lose a key it acknowledged: when the folder turns immutable between
    # truncating an object file and writing it anew, its writes fail unchecked and the call still
    # answers CKR_OK.  The adapter reads the new handle back and refuses the call when SoftHSM2
    # then calls it invalid (every case seen so far); counted, not asserted, in case a write can
    # fail without that mark (docs/reliability.md).
    unstored = [k for k in made if k not in outside]
    print(f"\n{flips} read-only periods: {len(made)} derives made, {len(failed)} failed {dict(errors)}; "
          f"leftovers swept: {token.leftovers.destroyed}; acknowledged by SoftHSM2 but not stored: {len(unstored)}")
    assert [k for k in failed if k in outside] == []  # nothing of a failed derive is in the token
    assert outside - inside == set()  # nothing in the token that the serving process does not see
    if token.leftovers.destroyed == 0:
        pytest.skip(f"no derive failed half-way in {flips} read-only periods (the rest passed)")
