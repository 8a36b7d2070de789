"""Curve identifiers and the key-generation recipes a module may accept.

Modules disagree on how to ask for the Montgomery curves (SoftHSM2 2.6 wants
CKM_EC_EDWARDS_KEY_PAIR_GEN with 1.3.101.110; NSS softoken wants
CKM_EC_KEY_PAIR_GEN with its own OID).  Rather than naming modules, the
adapter probes these candidates in order at start and keeps the first that
generates a key and derives with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import CKK, CKM
from .types import Curve


def _oid_der(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body.extend(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


OID = {
    "P-256": _oid_der("1.2.840.10045.3.1.7"),
    "P-384": _oid_der("1.3.132.0.34"),
    "P-521": _oid_der("1.3.132.0.35"),
    "secp256k1": _oid_der("1.3.132.0.10"),
    "X25519": _oid_der("1.3.101.110"),
    "X448": _oid_der("1.3.101.111"),
    "Ed25519": _oid_der("1.3.101.112"),
    "Ed448": _oid_der("1.3.101.113"),
    "X25519-nss": _oid_der("1.3.6.1.4.1.11591.15.1"),
}

CURVE_BY_PARAMS: dict[bytes, Curve] = {
    OID["P-256"]: Curve.P256,
    OID["P-384"]: Curve.P384,
    OID["P-521"]: Curve.P521,
    OID["secp256k1"]: Curve.SECP256K1,
    OID["X25519"]: Curve.X25519,
    OID["X25519-nss"]: Curve.X25519,
    OID["X448"]: Curve.X448,
    OID["Ed25519"]: Curve.ED25519,
    OID["Ed448"]: Curve.ED448,
}


def _printable(name: str) -> bytes:
    return bytes([0x13, len(name)]) + name.encode()


# SoftHSM2 stores the private half of a Montgomery/Edwards pair with the curve
# as a PrintableString name instead of the OID it was generated with.
CURVE_BY_PARAMS.update({
    _printable("curve25519"): Curve.X25519,
    _printable("curve448"): Curve.X448,
    _printable("edwards25519"): Curve.ED25519,
    _printable("edwards448"): Curve.ED448,
})


@dataclass(frozen=True)
class KeygenRecipe:
    mechanism: int
    key_type: int
    ec_params: bytes


def candidates(curve: Curve) -> list[KeygenRecipe]:
    if curve.family == "weierstrass":
        return [KeygenRecipe(CKM.EC_KEY_PAIR_GEN, CKK.EC, OID[curve.value])]
    if curve.family == "edwards":
        return [KeygenRecipe(CKM.EC_EDWARDS_KEY_PAIR_GEN, CKK.EC_EDWARDS, OID[curve.value])]
    oid = OID[curve.value]
    recipes = [
        KeygenRecipe(CKM.EC_MONTGOMERY_KEY_PAIR_GEN, CKK.EC_MONTGOMERY, oid),
        KeygenRecipe(CKM.EC_EDWARDS_KEY_PAIR_GEN, CKK.EC_MONTGOMERY, oid),
        KeygenRecipe(CKM.EC_EDWARDS_KEY_PAIR_GEN, CKK.EC_EDWARDS, oid),
    ]
    if curve is Curve.X25519:
        recipes.append(KeygenRecipe(CKM.EC_KEY_PAIR_GEN, CKK.EC, OID["X25519-nss"]))
    return recipes


def decode_ec_point(curve: Curve, raw: bytes) -> bytes:
    """CKA_EC_POINT to the canonical public encoding.

    Most modules DER-wrap the point in an OCTET STRING; NSS returns its X25519
    key bare.  Both are recognised by length, which is exact for every curve.
    """
    size = curve.public_bytes
    if len(raw) == size and not (curve.family == "weierstrass" and raw[0] != 0x04):
        return raw
    if raw and raw[0] == 0x04 and len(raw) >= 2:
        if raw[1] < 0x80:
            body = raw[2:]
        else:
            n = raw[1] & 0x7F
            body = raw[2 + n :]
        if len(body) == size:
            return body
    raise ValueError(f"unexpected CKA_EC_POINT encoding for {curve.value} ({len(raw)} bytes)")
