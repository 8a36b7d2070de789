"""Validation of peer public keys before they reach C_DeriveKey.

Tokens answer an off-curve or wrong-curve point with CKR_GENERAL_ERROR or
CKR_KEY_SIZE_RANGE; checking here turns those into a clear client error.
Every accepted form is reduced to the one encoding both tokens take: the
uncompressed SEC1 point, or the raw 32/56-byte Montgomery key.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from ..errors import InvalidInput
from .types import Curve

_EC_CURVES: dict[Curve, ec.EllipticCurve] = {
    Curve.P256: ec.SECP256R1(),
    Curve.P384: ec.SECP384R1(),
    Curve.P521: ec.SECP521R1(),
    Curve.SECP256K1: ec.SECP256K1(),
}

# Points of small order on Curve25519 / Curve448 give an all-zero secret.
_X25519_LOW_ORDER = {
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
}


def _curve_of(key: object) -> Curve | None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        for curve, spec in _EC_CURVES.items():
            if key.curve.name == spec.name:
                return curve
        return None
    if isinstance(key, x25519.X25519PublicKey):
        return Curve.X25519
    if isinstance(key, x448.X448PublicKey):
        return Curve.X448
    return None


@functools.lru_cache(maxsize=4096)
def normalize_peer(curve: Curve, data: bytes) -> bytes:
    """Accept a raw (uncompressed or compressed) point, DER SubjectPublicKeyInfo or
    PEM, check it lies on ``curve``, and return the canonical encoding."""
    if curve.family == "edwards":
        raise InvalidInput(f"{curve.value} keys are for signatures and cannot do ECDH")
    if not data:
        raise InvalidInput("the peer public key is empty")
    key: object | None = None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidInput(f"the peer PEM public key cannot be parsed: {exc}") from None
    elif data[0] == 0x30 and len(data) > curve.public_bytes:
        try:
            key = serialization.load_der_public_key(data)
        except ValueError:
            key = None
    if key is not None:
        found = _curve_of(key)
        if found is not curve:
            name = found.value if found else type(key).__name__
            raise InvalidInput(f"the peer key is on {name}, but the base key is on {curve.value}")
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]

    if curve.family == "montgomery":
        if len(data) != curve.public_bytes:
            raise InvalidInput(
                f"a {curve.value} public key is {curve.public_bytes} bytes, got {len(data)}"
            )
        if curve is Curve.X25519 and data in _X25519_LOW_ORDER:
            raise InvalidInput("the peer X25519 key is a low-order point")
        if curve is Curve.X448 and (data == bytes(56) or data == (1).to_bytes(56, "little")):
            raise InvalidInput("the peer X448 key is a low-order point")
        return data

    size = curve.field_bytes
    if len(data) == 1 + 2 * size and data[0] == 0x04:
        pass
    elif len(data) == 1 + size and data[0] in (0x02, 0x03):
        pass
    else:
        raise InvalidInput(
            f"a {curve.value} point is {1 + 2 * size} bytes uncompressed (04|X|Y) or "
            f"{1 + size} bytes compressed (02/03|X), got {len(data)} bytes"
        )
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(_EC_CURVES[curve], data)
    except ValueError:
        raise InvalidInput(f"the peer point is not on {curve.value}") from None
    if data[0] == 0x04:
        return data  # already canonical, and now known to lie on the curve
    return point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
