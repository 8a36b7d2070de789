"""HEM audit event types.

Where HEM documents a LOG_TYPE number it is kept (``code``); calls whose
number is not public are recorded under a descriptive name without a code
rather than an invented number.
"""

from __future__ import annotations

import enum


class LogType(enum.Enum):
    FAILED_SCOPE_CHECK = ("FAILED_SCOPE_CHECK", 12)
    AUTH_SUCCESS_INTERNAL = ("AUTH_SUCCESS_INTERNAL", 13)
    AUTH_SUCCESS_EXTERNAL = ("AUTH_SUCCESS_EXTERNAL", 14)
    KEY_GENERATION = ("KEY_GENERATION", 20)
    KEY_DELETE = ("KEY_DELETE", 21)
    KEY_IMPORT = ("KEY_IMPORT", 22)
    KEY_ATTRIBUTES_CHANGED = ("KEY_ATTRIBUTES_CHANGED", 25)
    KEY_DERIVE = ("KEY_DERIVE", 26)
    CRYPTO_ECDH = ("CRYPTO_ECDH", 38)
    # no public number:
    AUTH_FAILED_INTERNAL = ("AUTH_FAILED_INTERNAL", None)
    AUTH_FAILED = ("AUTH_FAILED", None)  # a call refused for a missing/invalid bearer token
    TLS_REQUIRED = ("TLS_REQUIRED", None)
    KEY_LIST = ("KEY_LIST", None)
    KEY_SEARCH = ("KEY_SEARCH", None)
    KEY_GET = ("KEY_GET", None)
    CRYPTO_ENCRYPT = ("CRYPTO_ENCRYPT", None)
    CRYPTO_DECRYPT = ("CRYPTO_DECRYPT", None)
    CRYPTO_HMAC = ("CRYPTO_HMAC", None)
    CRYPTO_HMAC_VERIFY = ("CRYPTO_HMAC_VERIFY", None)
    CRYPTO_SIGN = ("CRYPTO_SIGN", None)
    CRYPTO_VERIFY = ("CRYPTO_VERIFY", None)
    LOGGER_READ = ("LOGGER_READ", None)

    @property
    def label(self) -> str:
        return str(self.value[0])

    @property
    def code(self) -> int | None:
        code = self.value[1]
        return int(code) if code is not None else None
