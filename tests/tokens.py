"""Where the real PKCS#11 modules used by the tests live on this machine.

Debian/Ubuntu install them under multiarch directories, so look in this
interpreter's one (a 64-bit process cannot load another architecture's module)
rather than hard-coding x86_64.  ``GATEWAY_TEST_SOFTHSM_MODULE`` and
``GATEWAY_TEST_NSS_MODULE`` override the search.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from collections.abc import Sequence
from typing import Final

MULTIARCH: Final = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"


def find_module(env: str, candidates: Sequence[str]) -> str:
    """The first existing file among ``candidates``, else the first candidate.

    Returning a path even when nothing is installed keeps imports working;
    fixtures then fail with a clear "not installed" message.
    """
    override = os.environ.get(env)
    if override:
        return override
    for path in candidates:
        if os.path.isfile(path):
            return path
    return candidates[0]


SOFTHSM_MODULE: Final = find_module(
    "GATEWAY_TEST_SOFTHSM_MODULE",
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        f"/usr/lib/{MULTIARCH}/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
    ],
)

NSS_MODULE: Final = find_module(
    "GATEWAY_TEST_NSS_MODULE",
    [
        f"/usr/lib/{MULTIARCH}/libsoftokn3.so",
        f"/usr/lib/{MULTIARCH}/nss/libsoftokn3.so",
        "/usr/lib64/libsoftokn3.so",
    ],
)

# Tokens created once per test session in the shared SoftHSM2 directory.
SOFTHSM_LABELS: Final = (
    "adapter", "concurrency", "lookup", "recovery", "spare1", "spare2",
    # one per dialect or service test area, so their key counts stay independent
    "hem", "hem-raw2", "vault", "vault-2", "service", "stress", "leftovers", "staleview", "scangate", "keycopies", "writerelay",
    "tornread",
)
SOFTHSM_PIN: Final = "1234"
SOFTHSM_SO_PIN: Final = "5678"
NSS_PASSWORD: Final = "nsspin-1234"
NSS_LABEL: Final = "NSS Certificate DB"
NSS_INIT_ARGS: Final = (
    "configdir='sql:{directory}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
)
