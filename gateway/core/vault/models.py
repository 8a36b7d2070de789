"""The Vault dialect's domain: key specs, types and usages, vaults, keys, derivation recipes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final
from uuid import UUID

from gateway.token import Curve, HashAlg, SecretType, Usage

from .owner import Owner

# Bounds on free text: it is stored in CKA_LABEL, and labels are not meant to be essays.
MAX_NAME_CHARS: Final = 256
MAX_DESCRIPTION_CHARS: Final = 1024
MAX_CONTEXT_CHARS: Final = 1024
SYMMETRIC_KEY_BYTES: Final = 32
NONCE_MAX: Final = 2**32 - 1


class KeyType(enum.Enum):
    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class KeyUsage(enum.Enum):
    ENCRYPT_DECRYPT = "encrypt/decrypt"
    SIGN_VERIFY = "sign/verify"


class KeySpec(enum.Enum):
    """Every spec Provide Vault names; ``supported`` says which this gateway can hold."""

    AES_256_GCM = "AES-256-GCM"
    CHACHA20 = "ChaCha20"
    ED25519 = "Ed25519"
    SECP256K1 = "secp256k1"
    C25519 = "C25519"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    BIP39 = "BIP39"
    BLS12_381 = "BLS12-381"
    BABYJUBJUB = "babyJubJub"
    ED25519_NKEY = "Ed25519-nkey"

    @property
    def key_type(self) -> KeyType:
        return KeyType.SYMMETRIC if self in (KeySpec.AES_256_GCM, KeySpec.CHACHA20) else KeyType.ASYMMETRIC

    @property
    def usages(self) -> frozenset[KeyUsage]:
        """Usages Provide accepts for the spec (C25519 is an X25519 key-agreement key,
        which Provide files under both)."""
        if self.key_type is KeyType.SYMMETRIC:
            return frozenset({KeyUsage.ENCRYPT_DECRYPT})
        if self in (KeySpec.C25519, KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096):
            return frozenset(KeyUsage)
        return frozenset({KeyUsage.SIGN_VERIFY})

    @property
    def supported(self) -> bool:
        return self in SECRET_TYPES or self in CURVES

    @property
    def secret_type(self) -> SecretType | None:
        return SECRET_TYPES.get(self)

    @property
    def curve(self) -> Curve | None:
        return CURVES.get(self)

    @property
    def token_usage(self) -> Usage:
        """The CKA_ENCRYPT/SIGN/DERIVE flags a key of this spec gets in the token."""
        return TOKEN_USAGE[self]


SECRET_TYPES: Final = {KeySpec.AES_256_GCM: SecretType.AES, KeySpec.CHACHA20: SecretType.CHACHA20}
CURVES: Final = {KeySpec.ED25519: Curve.ED25519, KeySpec.SECP256K1: Curve.SECP256K1, KeySpec.C25519: Curve.X25519}
TOKEN_USAGE: Final = {
    KeySpec.AES_256_GCM: Usage(encrypt=True),
    KeySpec.CHACHA20: Usage(encrypt=True, derive=True),  # parents of derived keys
    KeySpec.ED25519: Usage(sign=True),
    KeySpec.SECP256K1: Usage(sign=True),
    KeySpec.C25519: Usage(derive=True),  # X25519 only agrees keys
}
# Why each unsupported spec is refused, and the mechanism that would be needed.
UNSUPPORTED: Final = {
    KeySpec.RSA_2048: ("this gateway does not implement RSA keys", "CKM_RSA_PKCS_KEY_PAIR_GEN"),
    KeySpec.RSA_3072: ("this gateway does not implement RSA keys", "CKM_RSA_PKCS_KEY_PAIR_GEN"),
    KeySpec.RSA_4096: ("this gateway does not implement RSA keys", "CKM_RSA_PKCS_KEY_PAIR_GEN"),
    KeySpec.BIP39: ("PKCS#11 has no BIP39/BIP32 hierarchical-deterministic wallet mechanism", "BIP32"),
    KeySpec.BLS12_381: ("no configured token offers BLS12-381 keys or pairing signatures", "BLS12-381"),
    KeySpec.BABYJUBJUB: ("no configured token offers keys on the babyJubJub curve", "babyJubJub"),
    KeySpec.ED25519_NKEY: ("NATS nkey encoding is not implemented; use the Ed25519 spec", "nkey"),
}


class Kdf(enum.Enum):
    """How a derived key was made (recorded with it)."""

    HKDF_SHA256 = "HKDF-SHA256"  # CKM_HKDF_DERIVE, extract and expand

    @property
    def mechanism(self) -> str:
        return "CKM_HKDF_DERIVE"

    @property
    def hash_alg(self) -> HashAlg:
        return HashAlg.SHA256


@dataclass(frozen=True)
class DeriveRecipe:
    """A derived key's inputs: parent, nonce and context are all bound into the key.

    salt = the nonce as 4 bytes big-endian, info = the context's UTF-8 bytes,
    so the same parent, nonce and context always give the same key.
    """

    parent_id: UUID
    nonce: int
    context: str
    kdf: Kdf = Kdf.HKDF_SHA256

    @property
    def salt(self) -> bytes:
        return self.nonce.to_bytes(4, "big")

    @property
    def info(self) -> bytes:
        return self.context.encode("utf-8")


@dataclass(frozen=True)
class Vault:
    id: UUID
    owner: Owner
    name: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class VaultKey:
    """A key as the API shows it; its material stays in the token ``token_name``."""

    id: UUID
    vault_id: UUID
    type: KeyType
    usage: KeyUsage
    spec: KeySpec
    name: str
    description: str
    created_at: datetime
    public_key: bytes | None = None
    derivation: DeriveRecipe | None = None
    token_name: str = ""

    @property
    def kid(self) -> bytes:
        """CKA_ID in the token: the UUID's 16 bytes."""
        return self.id.bytes


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(moment: datetime) -> str:
    """Like Provide's ``2020-04-22T13:44:12.613694+00:00`` (always with microseconds)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
