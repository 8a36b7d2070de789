"""How ``POST /api/keymgmt/derive`` turns an ECDH shared secret into the new key.

Symmetric targets (AES*, SHA2-*, SHA3-*) are made entirely in the token:

- ``hkdf-sha256``: Z = ECDH(kid, peer) as a session secret, then
  ``CKM_HKDF_DERIVE`` (extract and expand, SHA-256, no salt, info
  ``encedo-<type>``) into the new key -- what HEM documents.  Needs a token
  with HKDF (NSS softoken has it, SoftHSM2 2.6 does not).
- ``raw``: ``CKM_ECDH1_DERIVE`` with ``CKD_NULL`` straight into the new key:
  the LAST ``length`` bytes of Z (what PKCS#11 tokens keep when the key is
  shorter than Z).  A Z shorter than the key is refused (406).

``auto`` (the default) is ``hkdf-sha256`` where the token has it, else ``raw``,
so the SoftHSM2 dev setup works out of the box; the recipe used is stored
with each derived key.  docs/hem.md shows how a peer computes both.

Asymmetric targets (SECP*, CURVE*, ED*) need a private key made from a seed,
which no PKCS#11 mechanism does: they are offered only with
``hem.allow_asymmetric_derive = true``.  Then Z is read from the token once,
the seed is computed from it by the same recipe, the private key is computed
here and imported into the token as a sensitive object, and the buffers are
overwritten (best effort: Python may keep copies).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x448, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core.hem.types import KeyType
from gateway.errors import PolicyDenied, TokenRefused, Unsupported
from gateway.token.types import Curve, HashAlg

if TYPE_CHECKING:
    from gateway.token import Capabilities

ASYMMETRIC_SETTING: Final = "hem.allow_asymmetric_derive"

# Orders of the SECP groups: a seed must be a scalar in [1, n-1].
_ORDERS: Final = {
    Curve.P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    Curve.P384: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16),
    Curve.P521: int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409", 16),
    Curve.SECP256K1: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
}


class Recipe(enum.Enum):
    RAW = "raw"
    HKDF_SHA256 = "hkdf-sha256"


def resolve(configured: str, caps: Capabilities) -> Recipe:
    """The recipe of a deployment: ``auto`` follows what the token can do."""
    if configured == "auto":
        return Recipe.HKDF_SHA256 if caps.hkdf and HashAlg.SHA256 in caps.hkdf_hashes else Recipe.RAW
    return Recipe(configured)


def info_for(target: KeyType) -> bytes:
    """HKDF info of a derived key: ``encedo-<type>`` as HEM documents."""
    return b"encedo-" + target.value.encode("ascii")


def check_symmetric(recipe: Recipe, target: KeyType, base_curve: Curve, caps: Capabilities) -> None:
    """Refuse (406) what the token or recipe cannot make, before touching the token."""
    secret = target.secret
    assert secret is not None
    if recipe is Recipe.HKDF_SHA256:
        caps.require_hkdf(HashAlg.SHA256)
    elif secret[1] > base_curve.field_bytes:
        raise Unsupported(
            f"the raw recipe keeps the {base_curve.field_bytes}-byte {base_curve.value} shared secret, shorter "
            f"than the {secret[1]}-byte {target.value} key (CKD_NULL cannot lengthen it; hkdf-sha256 can)",
            "CKD_NULL",
        )


def require_asymmetric_policy(allowed: bool, target: KeyType) -> None:
    if not allowed:
        raise PolicyDenied(
            f"deriving a {target.value} key computes a private key outside the token; "
            f"the deployment must opt in with {ASYMMETRIC_SETTING} = true",
            ASYMMETRIC_SETTING,
        )


def seed_from_secret(recipe: Recipe, target: KeyType, z: bytearray) -> bytearray:
    """The private-key seed of an asymmetric target, by the deployment's recipe."""
    size = target.seed_bytes
    if recipe is Recipe.RAW:
        if len(z) < size:
            raise Unsupported(f"the {len(z)}-byte shared secret is shorter than a {target.value} private key "
                              f"({size} bytes) with the raw recipe", "CKD_NULL")
        return bytearray(z[-size:])
    return bytearray(HKDF(hashes.SHA256(), size, None, info_for(target)).derive(bytes(z)))


def check_scalar(target: KeyType, seed: bytearray) -> None:
    """SECP seeds must be in [1, n-1]: otherwise 406, as on the device ("can fail without being an error")."""
    curve = target.curve
    if curve in _ORDERS and not 1 <= int.from_bytes(seed, "big") < _ORDERS[curve]:
        raise TokenRefused(f"the derived seed is outside the {target.value} group order; HEM answers 406 too "
                           "(derive from another key or peer)", "seed out of range")


def wipe(buffer: bytearray) -> None:
    for i in range(len(buffer)):
        buffer[i] = 0


_EC_CURVES: Final = {Curve.P256: ec.SECP256R1(), Curve.P384: ec.SECP384R1(), Curve.P521: ec.SECP521R1(),
                     Curve.SECP256K1: ec.SECP256K1()}


def public_key_of(target: KeyType, seed: bytearray) -> bytes:
    """The public key of the private key ``seed`` (uncompressed point, or raw key)."""
    curve = target.curve
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if curve in _EC_CURVES:
        private = ec.derive_private_key(int.from_bytes(seed, "big"), _EC_CURVES[curve])
        return private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    loaders: dict[Curve | None, Any] = {Curve.X25519: x25519.X25519PrivateKey, Curve.X448: x448.X448PrivateKey,
                                        Curve.ED25519: ed25519.Ed25519PrivateKey, Curve.ED448: ed448.Ed448PrivateKey}
    return bytes(loaders[curve].from_private_bytes(bytes(seed)).public_key().public_bytes(*raw))
