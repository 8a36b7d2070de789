"""Typed vocabulary of the token adapter (no pkcs11 import: the core uses these)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Curve(enum.Enum):
    """Elliptic curves, with the sizes the adapter needs to validate peers."""

    P256 = "P-256"
    P384 = "P-384"
    P521 = "P-521"
    SECP256K1 = "secp256k1"
    X25519 = "X25519"
    X448 = "X448"
    ED25519 = "Ed25519"
    ED448 = "Ed448"

    @property
    def family(self) -> str:
        """'weierstrass', 'montgomery' (ECDH only) or 'edwards' (EdDSA only)."""
        if self in (Curve.X25519, Curve.X448):
            return "montgomery"
        if self in (Curve.ED25519, Curve.ED448):
            return "edwards"
        return "weierstrass"

    @property
    def field_bytes(self) -> int:
        """Length of the ECDH shared secret Z (and of one coordinate)."""
        return _FIELD_BYTES[self.value]

    @property
    def public_bytes(self) -> int:
        """Length of the canonical public key: uncompressed SEC1 point or raw RFC 7748/8032 key."""
        if self.family == "weierstrass":
            return 1 + 2 * self.field_bytes
        return self.field_bytes


_FIELD_BYTES = {
    "P-256": 32, "P-384": 48, "P-521": 66, "secp256k1": 32,
    "X25519": 32, "X448": 56, "Ed25519": 32, "Ed448": 57,
}


class SecretType(enum.Enum):
    """Secret key types the gateway creates in tokens."""

    AES = "AES"
    GENERIC = "GENERIC_SECRET"  # HMAC keys and intermediate secrets
    CHACHA20 = "CHACHA20"

    def valid_lengths(self) -> tuple[int, ...]:
        if self is SecretType.AES:
            return (16, 24, 32)
        if self is SecretType.CHACHA20:
            return (32,)
        return tuple(range(16, 129))


class HashAlg(enum.Enum):
    SHA256 = "SHA-256"
    SHA384 = "SHA-384"
    SHA512 = "SHA-512"
    SHA3_256 = "SHA3-256"
    SHA3_384 = "SHA3-384"
    SHA3_512 = "SHA3-512"

    @property
    def digest_size(self) -> int:
        return int(self.name.rsplit("_", 1)[-1].removeprefix("SHA")) // 8


class EcdhKdf(enum.Enum):
    """KDF applied by CKM_ECDH1_DERIVE itself (ANSI X9.63)."""

    NULL = "null"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


class KeyClass(enum.Enum):
    SECRET = "secret"
    PRIVATE = "private"
    PUBLIC = "public"


@dataclass(frozen=True)
class Usage:
    """What a created key may be used for (CKA_ENCRYPT/DECRYPT, SIGN/VERIFY, DERIVE)."""

    encrypt: bool = False
    sign: bool = False
    derive: bool = False

    @classmethod
    def of(cls, *names: str) -> "Usage":
        return cls(**{n: True for n in names})


@dataclass(frozen=True)
class SecretSpec:
    """What a derivation or generation produces: a stored (or session) secret key."""

    kid: bytes
    label: str
    kind: SecretType
    length: int  # bytes
    usage: Usage = Usage(encrypt=True)
    token: bool = True  # False: a session object, gone when the session closes


@dataclass(frozen=True)
class KeyInfo:
    """A key as the token holds it; never any secret value."""

    kid: bytes
    label: str
    key_class: KeyClass
    secret_type: SecretType | None = None
    length: int | None = None  # bytes, secret keys
    curve: Curve | None = None
    public_key: bytes | None = None  # canonical encoding, see Curve.public_bytes
    sensitive: bool | None = None
    extractable: bool | None = None
    usage: Usage = Usage()
    token_name: str = ""


@dataclass(frozen=True)
class DataObject:
    """A CKO_DATA object: the gateway's own records (vaults, ...)."""

    application: str
    label: str
    value: bytes
