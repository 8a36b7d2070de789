"""HEM key types and modes, and what each one is in a PKCS#11 token.

| HEM type | token object | usage |
|---|---|---|
| SECP256R1/384R1/521R1/256K1 | EC key pair on P-256/P-384/P-521/secp256k1 | mode ECDH -> CKA_DERIVE, ExDSA -> CKA_SIGN |
| CURVE25519/448 | X25519/X448 key pair | CKA_DERIVE |
| ED25519/448 | Ed25519/Ed448 key pair | CKA_SIGN |
| SHA2-*/SHA3-* | generic secret of the digest size (an HMAC key) | CKA_SIGN |
| AES128/192/256 | AES key of 16/24/32 bytes | CKA_ENCRYPT/DECRYPT |
| MLKEM*/MLDSA* | none on today's tokens: 406 naming the mechanism | |
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from gateway.errors import InvalidInput, Unsupported
from gateway.token.types import Curve, HashAlg, SecretType, Usage

if TYPE_CHECKING:
    from gateway.token import Capabilities

ECDH: Final = "ECDH"
EXDSA: Final = "ExDSA"


class KeyType(enum.Enum):
    SECP256R1 = "SECP256R1"
    SECP384R1 = "SECP384R1"
    SECP521R1 = "SECP521R1"
    SECP256K1 = "SECP256K1"
    CURVE25519 = "CURVE25519"
    CURVE448 = "CURVE448"
    ED25519 = "ED25519"
    ED448 = "ED448"
    SHA2_256 = "SHA2-256"
    SHA2_384 = "SHA2-384"
    SHA2_512 = "SHA2-512"
    SHA3_256 = "SHA3-256"
    SHA3_384 = "SHA3-384"
    SHA3_512 = "SHA3-512"
    AES128 = "AES128"
    AES192 = "AES192"
    AES256 = "AES256"
    MLKEM512 = "MLKEM512"
    MLKEM768 = "MLKEM768"
    MLKEM1024 = "MLKEM1024"
    MLDSA44 = "MLDSA44"
    MLDSA65 = "MLDSA65"
    MLDSA87 = "MLDSA87"

    @classmethod
    def parse(cls, value: object) -> "KeyType":
        if not isinstance(value, str) or not value:
            raise InvalidInput("type is required: a HEM key type such as SECP256R1, CURVE25519 or AES256")
        try:
            return cls(value)
        except ValueError:
            raise InvalidInput(f"unknown key type {value[:40]!r}; expected one of {', '.join(t.value for t in cls)}") from None

    @property
    def curve(self) -> Curve | None:
        return _CURVES.get(self)

    @property
    def is_secp(self) -> bool:
        return self.name.startswith("SECP")

    @property
    def is_pqc(self) -> bool:
        return self.name.startswith(("MLKEM", "MLDSA"))

    @property
    def is_symmetric(self) -> bool:
        return self.secret is not None

    @property
    def hmac_hash(self) -> HashAlg | None:
        return _HMAC.get(self)

    @property
    def secret(self) -> tuple[SecretType, int] | None:
        """(kind, length in bytes) of a symmetric type."""
        if self in _HMAC:
            return SecretType.GENERIC, _HMAC[self].digest_size
        if self in _AES:
            return SecretType.AES, _AES[self]
        return None

    @property
    def seed_bytes(self) -> int:
        """Private-key size of an asymmetric type (what a derived seed must provide)."""
        curve = self.curve
        if curve is None:
            raise InvalidInput(f"{self.value} is not an elliptic-curve type")
        return curve.field_bytes

    def modes(self, requested: object = None) -> tuple[str, ...]:
        """The usage modes of a key of this type; ``requested`` only matters for SECP types."""
        if self.is_secp:
            if requested is None or requested == "":
                return (ECDH,)  # the device's default for NIST curves
            if not isinstance(requested, str):
                raise InvalidInput("mode must be a string: ECDH, ExDSA or ECDH,ExDSA")
            parts = {p.strip() for p in requested.split(",")}
            if not parts or not parts <= {ECDH, EXDSA}:
                raise InvalidInput(f"unknown mode {requested[:40]!r}; expected ECDH, ExDSA or ECDH,ExDSA")
            return tuple(m for m in (ECDH, EXDSA) if m in parts)
        if self in (KeyType.CURVE25519, KeyType.CURVE448):
            return (ECDH,)
        if self in (KeyType.ED25519, KeyType.ED448):
            return (EXDSA,)
        return ()

    def usage(self, modes: tuple[str, ...]) -> Usage:
        if self.hmac_hash is not None:
            return Usage(sign=True)
        if self in _AES:
            return Usage(encrypt=True)
        return Usage(derive=ECDH in modes, sign=EXDSA in modes)

    def descriptor(self, modes: tuple[str, ...], private: bool) -> str:
        """The comma-joined ``type`` HEM lists show, e.g. ``PKEY,ECDH,ExDSA,SECP256R1``."""
        parts = (["PKEY"] if private and self.curve is not None else []) + list(modes) + [self.value]
        return ",".join(parts)

    def require_supported(self, caps: Capabilities) -> None:
        """Raise Unsupported (406) naming the mechanism when the token cannot hold this type."""
        if self.is_pqc:
            mech = "CKM_ML_KEM_KEY_PAIR_GEN" if self.name.startswith("MLKEM") else "CKM_ML_DSA_KEY_PAIR_GEN"
            raise Unsupported(f"the token cannot hold {self.value} keys ({mech})", mech)
        curve = self.curve
        if curve is not None:
            caps.require_curve(curve)
            if curve.family == "montgomery":
                caps.require_ecdh(curve)
            return
        secret = self.secret
        assert secret is not None
        caps.require_secret(secret[0])
        if self.hmac_hash is not None:
            caps.require_hmac(self.hmac_hash)


_CURVES: Final = {
    KeyType.SECP256R1: Curve.P256,
    KeyType.SECP384R1: Curve.P384,
    KeyType.SECP521R1: Curve.P521,
    KeyType.SECP256K1: Curve.SECP256K1,
    KeyType.CURVE25519: Curve.X25519,
    KeyType.CURVE448: Curve.X448,
    KeyType.ED25519: Curve.ED25519,
    KeyType.ED448: Curve.ED448,
}
_HMAC: Final = {
    KeyType.SHA2_256: HashAlg.SHA256,
    KeyType.SHA2_384: HashAlg.SHA384,
    KeyType.SHA2_512: HashAlg.SHA512,
    KeyType.SHA3_256: HashAlg.SHA3_256,
    KeyType.SHA3_384: HashAlg.SHA3_384,
    KeyType.SHA3_512: HashAlg.SHA3_512,
}
_AES: Final = {KeyType.AES128: 16, KeyType.AES192: 24, KeyType.AES256: 32}

# The hash names HEM uses in `alg` fields (ecdh, hmac).
HASH_NAMES: Final = {
    "SHA2-256": HashAlg.SHA256,
    "SHA2-384": HashAlg.SHA384,
    "SHA2-512": HashAlg.SHA512,
    "SHA3-256": HashAlg.SHA3_256,
    "SHA3-384": HashAlg.SHA3_384,
    "SHA3-512": HashAlg.SHA3_512,
}
