"""One side of tests/test_token_two_processes.py, run as its own process (a PKCS#11 module is
initialised once per process, so "another process" must be one).

``python -m tests.two_process_worker make LABEL N``: make N P-256 key pairs, and for each a
derived key that is destroyed again at once; print each pair's kid (hex) as it is made.
``python -m tests.two_process_worker use LABEL``: for every kid read on stdin, derive from
it, read the new key back and destroy it.  Each side prints one JSON line of counts last.
SOFTHSM2_CONF and GATEWAY_TEST_PIN come from the environment.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import GatewayError
from gateway.token import Curve, SecretSpec, SecretType, Token, TokenSettings, Usage
from tests.tokens import SOFTHSM_MODULE


def main() -> int:
    role, label = sys.argv[1], sys.argv[2]
    token = Token(TokenSettings(name=role, module=SOFTHSM_MODULE, label=label, pin=os.environ["GATEWAY_TEST_PIN"],
                                environment={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}))
    peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    errors: Counter[str] = Counter()
    done = Counter[str]()
    lock = threading.Lock()

    def derive_and_drop(base: bytes, read_back: bool) -> None:
        kid = os.urandom(16)
        token.ecdh_derive(base, SecretSpec(kid, "two-process", SecretType.AES, 32, Usage(encrypt=True)), peer=peer)
        if read_back:
            token.get_key(kid)
        token.destroy(kid)

    def make(_: int) -> None:
        try:
            kid = os.urandom(16)
            token.generate_keypair(kid, "two-process", Curve.P256, Usage(derive=True))
            derive_and_drop(kid, False)
            with lock:
                sys.stdout.write(kid.hex() + "\n")
                sys.stdout.flush()
            done["made"] += 1
        except GatewayError as exc:
            errors[f"{type(exc).__name__}: {exc.message}"] += 1

    def use(line: str) -> None:
        try:
            derive_and_drop(bytes.fromhex(line.strip()), True)
            done["used"] += 1
        except GatewayError as exc:
            errors[f"{type(exc).__name__}: {exc.message}"] += 1

    with ThreadPoolExecutor(4) as pool:
        if role == "make":
            list(pool.map(make, range(int(sys.argv[3]))))
        else:
            list(pool.map(use, sys.stdin))
    print(json.dumps({"role": role, **done, "errors": dict(errors),
                      "transient_retries": token.counters["transient_retries"]}), flush=True)
    token.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
