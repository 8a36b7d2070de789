"""Using HEM keys through the API, each result checked in software: ECDH, AES-GCM, HMAC, ECDSA, EdDSA."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.hem_helpers import (  # noqa: F401  (fixtures)
    Session,
    client,
    hem_settings,
    hem_tokens,
    tls,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def public_of(session: Session, kid: str) -> bytes:
    return unb64((await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get"))["pubkey"])


async def test_ecdh_raw_and_hashed(client: Any) -> None:
    session = Session(client)
    kid = await session.create("CURVE25519")
    peer = x25519.X25519PrivateKey.generate()
    peer_raw = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    z = peer.exchange(x25519.X25519PublicKey.from_public_bytes(await public_of(session, kid)))
    scope = f"keymgmt:use:{kid}"
    got = await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": b64(peer_raw)})
    assert unb64(got["ecdh"]) == z
    for alg, digest in (("SHA2-256", hashlib.sha256), ("SHA2-512", hashlib.sha512), ("SHA3-256", hashlib.sha3_256)):
        got = await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": b64(peer_raw), "alg": alg})
        assert unb64(got["ecdh"]) == digest(z).digest()
    stored = (await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "p", "type": "CURVE25519",
                                                                           "pubkey": b64(peer_raw)}))["kid"]
    got = await session.post("/api/crypto/ecdh", scope, {"kid": kid, "ext_kid": stored})
    assert unb64(got["ecdh"]) == z
    await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": b64(peer_raw), "alg": "MD5"}, status=400)
    await session.post("/api/crypto/ecdh", scope, {"kid": kid}, status=400)


async def test_ecdh_p256_with_compressed_peer(client: Any) -> None:
    session = Session(client)
    kid = await session.create("SECP256R1", mode="ECDH")
    peer = ec.generate_private_key(ec.SECP256R1())
    compressed = peer.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    z = peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), await public_of(session, kid)))
    got = await session.post("/api/crypto/ecdh", f"keymgmt:use:{kid}", {"kid": kid, "pubkey": b64(compressed)})
    assert unb64(got["ecdh"]) == z
    signer = await session.create("SECP256R1", mode="ExDSA")
    answer = await session.post("/api/crypto/ecdh", f"keymgmt:use:{signer}", {"kid": signer, "pubkey": b64(compressed)},
                                status=406)
    assert "CKA_DERIVE" in answer["message"] or "ECDH" in answer["message"]


@pytest.mark.parametrize("key_type", ["AES128", "AES256"])
async def test_aes_gcm_round_trip_and_refusals(client: Any, key_type: str) -> None:
    session = Session(client)
    kid = await session.create(key_type)
    scope, alg = f"keymgmt:use:{kid}", f"{key_type}-GCM"
    plaintext, aad = os.urandom(333), os.urandom(16)
    sealed = await session.post("/api/crypto/cipher/encrypt", scope, {"kid": kid, "alg": alg, "msg": b64(plaintext), "aad": b64(aad)})
    body = {"kid": kid, "alg": alg, "msg": sealed["ciphertext"], "iv": sealed["iv"], "tag": sealed["tag"], "aad": b64(aad)}
    opened = await session.post("/api/crypto/cipher/decrypt", scope, body)
    assert unb64(opened["plaintext"]) == plaintext
    forged = bytearray(unb64(sealed["tag"]))
    forged[0] ^= 1
    answer = await session.post("/api/crypto/cipher/decrypt", scope, {**body, "tag": b64(bytes(forged))}, status=406)
    assert "not authentic" in answer["message"]
    await session.post("/api/crypto/cipher/decrypt", scope, {**body, "aad": b64(b"other")}, status=406)
    await session.post("/api/crypto/cipher/decrypt", scope, {**body, "iv": b64(bytes(12))}, status=400)
    answer = await session.post("/api/crypto/cipher/encrypt", scope, {"kid": kid, "alg": f"{key_type}-CBC", "msg": b64(b"x")},
                                status=406)
    assert "CKM_AES_CBC" in answer["message"]
    other = "AES256-GCM" if key_type == "AES128" else "AES128-GCM"
    await session.post("/api/crypto/cipher/encrypt", scope, {"kid": kid, "alg": other, "msg": b64(b"x")}, status=406)
    await session.post("/api/crypto/cipher/encrypt", scope, {"kid": kid, "alg": "DES-GCM", "msg": b64(b"x")}, status=400)
    answer = await session.post("/api/crypto/cipher/encrypt", scope, {"kid": kid, "alg": alg, "msg": b64(b"x"),
                                                                       "pubkey": b64(bytes(32))}, status=406)
    assert "derive a stored key" in answer["message"]


async def test_hmac_hash_and_verify(client: Any) -> None:
    """A derived HMAC key (raw recipe, so the key is known in software) through hmac/hash and hmac/verify."""
    session = Session(client)
    base = await session.create("SECP521R1", mode="ECDH")
    peer = ec.generate_private_key(ec.SECP521R1())
    peer_public = peer.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    derived = (await session.post("/api/keymgmt/derive", "keymgmt:gen", {
        "kid": base, "label": "mac", "type": "SHA2-512", "pubkey": b64(peer_public)}))["kid"]
    z = peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP521R1(), await public_of(session, base)))
    key = z[-64:]
    scope, message = f"keymgmt:use:{derived}", os.urandom(100)
    mac = unb64((await session.post("/api/crypto/hmac/hash", scope, {"kid": derived, "msg": b64(message)}))["mac"])
    assert mac == hmac.new(key, message, hashlib.sha512).digest()
    assert await session.post("/api/crypto/hmac/verify", scope, {"kid": derived, "msg": b64(message), "mac": b64(mac)}) == ""
    answer = await session.post("/api/crypto/hmac/verify", scope, {"kid": derived, "msg": b64(message + b"!"), "mac": b64(mac)},
                                status=406)
    assert "does not match" in answer["message"]
    aes = await session.create("AES128")
    await session.post("/api/crypto/hmac/hash", f"keymgmt:use:{aes}", {"kid": aes, "msg": b64(b"m")}, status=406)


@pytest.mark.parametrize(("alg", "curve", "hash_alg"), [
    ("SHA256WithECDSA", ec.SECP256R1(), hashes.SHA256()), ("SHA384WithECDSA", ec.SECP384R1(), hashes.SHA384()),
    ("SHA256WithECDSA", ec.SECP256K1(), hashes.SHA256()),
])
async def test_ecdsa_sign_and_verify(client: Any, alg: str, curve: ec.EllipticCurve, hash_alg: hashes.HashAlgorithm) -> None:
    session = Session(client)
    key_type = {"secp256r1": "SECP256R1", "secp384r1": "SECP384R1", "secp256k1": "SECP256K1"}[curve.name]
    kid = await session.create(key_type, mode="ExDSA")
    scope, message = f"keymgmt:use:{kid}", os.urandom(64)
    signature = unb64((await session.post("/api/crypto/exdsa/sign", scope, {"kid": kid, "msg": b64(message), "alg": alg}))["sign"])
    size = len(signature) // 2
    public = ec.EllipticCurvePublicKey.from_encoded_point(curve, await public_of(session, kid))
    der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
    public.verify(der, message, ec.ECDSA(hash_alg))
    body = {"kid": kid, "msg": b64(message), "alg": alg}
    assert await session.post("/api/crypto/exdsa/verify", scope, {**body, "sign": b64(signature)}) == ""
    assert await session.post("/api/crypto/exdsa/verify", scope, {**body, "sign": b64(der)}) == ""  # DER accepted too
    await session.post("/api/crypto/exdsa/verify", scope, {**body, "msg": b64(message + b"x"), "sign": b64(signature)}, status=406)
    await session.post("/api/crypto/exdsa/sign", scope, {**body, "alg": "Ed25519"}, status=406)


async def test_eddsa_sign_and_imported_key_verify(client: Any) -> None:
    session = Session(client)
    for key_type, alg, loader in (("ED25519", "Ed25519", ed25519.Ed25519PublicKey), ("ED448", "Ed448", ed448.Ed448PublicKey)):
        kid = await session.create(key_type)
        message = os.urandom(50)
        signature = unb64((await session.post("/api/crypto/exdsa/sign", f"keymgmt:use:{kid}",
                                              {"kid": kid, "msg": b64(message), "alg": alg}))["sign"])
        loader.from_public_bytes(await public_of(session, kid)).verify(signature, message)
    # verify with an imported public key, signed in software
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = (await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "v", "type": "ED25519", "pubkey": b64(raw)}))["kid"]
    message = b"signed elsewhere"
    body = {"kid": kid, "msg": b64(message), "alg": "Ed25519", "sign": b64(private.sign(message))}
    assert await session.post("/api/crypto/exdsa/verify", f"keymgmt:use:{kid}", body) == ""
    await session.post("/api/crypto/exdsa/verify", f"keymgmt:use:{kid}", {**body, "sign": b64(bytes(64))}, status=406)
    answer = await session.post("/api/crypto/exdsa/sign", f"keymgmt:use:{kid}", {"kid": kid, "msg": b64(b"m"), "alg": "Ed25519"},
                                status=406)
    assert "public key" in answer["message"]
    answer = await session.post("/api/crypto/exdsa/sign", f"keymgmt:use:{kid}", {"kid": kid, "msg": b64(b"m"), "alg": "Ed25519ph"},
                                status=406)
    assert "Ed25519ph" in answer["message"]
