"""POST /api/keymgmt/derive: the acceptance flow on real tokens, and every status code of its page.

The client side (handshake, software ECDH, recipes) is written here from the
notes and docs/hem.md, never by calling gateway code.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.http.app import create_app
from gateway.token import TokenSet
from gateway.token.settings import TokenSettings
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    MASTER_PASSPHRASE,
    Session,
    bearer,
    client,
    hem_settings,
    hem_tokens,
    ok,
    service_of,
    tls,
    tls_client,
    write_config,
)

CURVES = {"SECP256R1": ec.SECP256R1(), "SECP256K1": ec.SECP256K1()}


def peer_pair(key_type: str) -> tuple[Any, bytes]:
    """A software peer key and the public key as HEM clients send it (compressed for SECP)."""
    if key_type == "CURVE25519":
        private = x25519.X25519PrivateKey.generate()
        return private, private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private = ec.generate_private_key(CURVES[key_type])
    return private, private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def software_z(key_type: str, peer: Any, base_public: bytes) -> bytes:
    if key_type == "CURVE25519":
        return peer.exchange(x25519.X25519PublicKey.from_public_bytes(base_public))
    return peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(CURVES[key_type], base_public))


def recipe_key(recipe: str, z: bytes, target: str, length: int) -> bytes:
    """docs/hem.md: raw = the last bytes of Z; hkdf-sha256 = HKDF(Z, no salt, info encedo-<type>)."""
    if recipe == "raw":
        return z[-length:]
    return HKDF(hashes.SHA256(), length, None, b"encedo-" + target.encode()).derive(z)


async def derive_and_check(session: Session, key_type: str, recipe: str) -> None:
    base = await session.create(key_type, "base", mode="ECDH")
    info = await session.get(f"/api/keymgmt/get/{base}", "keymgmt:gen")
    assert info["type"] == key_type
    base_public = base64.b64decode(info["pubkey"])
    peer, peer_public = peer_pair(key_type)
    derived = (await session.post("/api/keymgmt/derive", "keymgmt:gen", {
        "kid": base, "label": "derived", "type": "AES256", "pubkey": base64.b64encode(peer_public).decode(),
    }))["kid"]
    assert len(derived) == 32 and derived != base
    shown = await session.get(f"/api/keymgmt/get/{derived}", f"keymgmt:use:{derived}")
    assert (shown["type"], shown["recipe"], shown["base"]) == ("AES256", recipe, base)
    assert "pubkey" not in shown

    plaintext, aad = os.urandom(100), b"header"
    sealed = await session.post("/api/crypto/cipher/encrypt", f"keymgmt:use:{derived}", {
        "kid": derived, "alg": "AES256-GCM", "msg": base64.b64encode(plaintext).decode(), "aad": base64.b64encode(aad).decode(),
    })
    iv, tag, ciphertext = (base64.b64decode(sealed[k]) for k in ("iv", "tag", "ciphertext"))
    assert len(iv) == 16 and len(tag) == 16
    key = recipe_key(recipe, software_z(key_type, peer, base_public), "AES256", 32)
    assert AESGCM(key).decrypt(iv, ciphertext + tag, aad) == plaintext


@pytest.mark.parametrize("key_type", ["SECP256R1", "SECP256K1", "CURVE25519"])
async def test_derive_raw_on_softhsm_matches_software(client: Any, key_type: str) -> None:
    assert service_of(client).keys.recipe.value == "raw"  # auto: SoftHSM2 has no HKDF
    await derive_and_check(Session(client), key_type, "raw")


@pytest.fixture(scope="module")
def nss_tokens(nss_settings: TokenSettings) -> Iterator[TokenSet]:
    tokens = TokenSet.open([nss_settings])
    yield tokens
    tokens.close()


@pytest.fixture
async def nss_client(aiohttp_client: Any, nss_tokens: TokenSet, nss_settings: TokenSettings, tls: Any, tmp_path: Path) -> Any:
    config = write_config(tmp_path, [nss_settings])
    return await tls_client(aiohttp_client, create_app(config, nss_tokens), tls)


@pytest.mark.parametrize("key_type", ["SECP256R1", "CURVE25519"])
async def test_derive_hkdf_on_nss_matches_software(nss_client: Any, key_type: str) -> None:
    assert service_of(nss_client).keys.recipe.value == "hkdf-sha256"  # auto: NSS has HKDF
    await derive_and_check(Session(nss_client), key_type, "hkdf-sha256")


async def test_derive_with_ext_kid_and_hmac_target(client: Any) -> None:
    """ext_kid (a stored public key) wins over pubkey; an HMAC target is checked through hmac/hash."""
    session = Session(client)
    base = await session.create("SECP256R1", mode="ECDH")
    base_public = base64.b64decode((await session.get(f"/api/keymgmt/get/{base}", "keymgmt:gen"))["pubkey"])
    peer, peer_public = peer_pair("SECP256R1")
    ext = (await session.post("/api/keymgmt/import", "keymgmt:imp", {
        "label": "peer", "type": "SECP256R1", "mode": "ECDH", "pubkey": base64.b64encode(peer_public).decode()}))["kid"]
    _, decoy = peer_pair("SECP256R1")
    derived = (await session.post("/api/keymgmt/derive", "keymgmt:derive", {
        "kid": base, "ext_kid": ext, "pubkey": base64.b64encode(decoy).decode(), "label": "mac", "type": "SHA2-256"}))["kid"]
    shown = await session.get(f"/api/keymgmt/get/{derived}", "keymgmt:gen")
    assert shown["peer"] == ext
    message = b"message to authenticate"
    mac = base64.b64decode((await session.post("/api/crypto/hmac/hash", f"keymgmt:use:{derived}", {
        "kid": derived, "msg": base64.b64encode(message).decode()}))["mac"])
    import hmac as hmac_lib
    import hashlib

    key = recipe_key("raw", software_z("SECP256R1", peer, base_public), "SHA2-256", 32)
    assert mac == hmac_lib.new(key, message, hashlib.sha256).digest()


# --------------------------------------------------------------------------- status codes of the derive page


async def test_derive_400_bad_arguments(client: Any) -> None:
    session = Session(client)
    base = await session.create("CURVE25519")
    other = await session.create("SECP256R1", mode="ECDH")
    _, peer = peer_pair("CURVE25519")
    peer_b64 = base64.b64encode(peer).decode()
    cases = [
        ({"kid": base, "label": "x", "type": "AES999", "pubkey": peer_b64}, "unknown key type"),  # the device says 200 here
        ({"kid": "xyz", "label": "x", "type": "AES256", "pubkey": peer_b64}, "kid must be 32 hex"),
        ({"kid": base, "type": "AES256", "pubkey": peer_b64}, "label is required"),
        ({"kid": base, "label": "x" * 33, "type": "AES256", "pubkey": peer_b64}, "label must be 1 to 32"),
        ({"kid": base, "label": "x", "type": "AES256"}, "ext_kid or pubkey is required"),
        ({"kid": base, "label": "x", "type": "AES256", "pubkey": "AAAA"}, "not a CURVE25519 public key"),
        ({"kid": base, "label": "x", "type": "AES256", "ext_kid": other}, "ECDH needs both of one type"),
        ({"kid": base, "label": "x", "type": "AES256", "pubkey": peer_b64, "descr": base64.b64encode(bytes(65)).decode()},
         "at most 64 bytes"),
        ({"kid": base, "label": "x", "type": "SECP256R1", "mode": "SIGN", "pubkey": peer_b64}, "unknown mode"),
    ]
    for body, message in cases:
        answer = await session.post("/api/keymgmt/derive", "keymgmt:gen", body, status=400)
        assert message in answer["message"], (body, answer)
    bad_json = await client.post("/api/keymgmt/derive", data=b"{not json", headers=await session.headers("keymgmt:gen"))
    assert bad_json.status == 400


async def test_derive_401_without_a_valid_token(client: Any) -> None:
    body = {"kid": "00" * 16, "label": "x", "type": "AES256", "pubkey": "AAAA"}
    assert (await client.post("/api/keymgmt/derive", json=body)).status == 401
    assert (await client.post("/api/keymgmt/derive", json=body, headers={"Authorization": "Bearer nonsense"})).status == 401
    token = await Session(client).headers("keymgmt:gen")
    forged = token["Authorization"][:-4] + ("AAAA" if not token["Authorization"].endswith("AAAA") else "BBBB")
    assert (await client.post("/api/keymgmt/derive", json=body, headers={"Authorization": forged})).status == 401
    expired = await service_of(client).auth.issue({"scope": "keymgmt:gen", "sub": "U", "iat": 1, "exp": 2, "jti": "x", "usr": "alice"})
    answer = await ok(await client.post("/api/keymgmt/derive", json=body, headers=bearer(expired)), 401)
    assert "expired" in answer["message"]


async def test_derive_403_scope_and_role(client: Any) -> None:
    session = Session(client)
    base = await session.create("CURVE25519")
    _, peer = peer_pair("CURVE25519")
    body = {"kid": base, "label": "x", "type": "AES256", "pubkey": base64.b64encode(peer).decode()}
    for scope in ("keymgmt:list", f"keymgmt:use:{base}", "logger:get", "keymgmt"):
        await session.post("/api/keymgmt/derive", scope, body, status=403)
    master = Session(client, MASTER_PASSPHRASE)
    answer = await master.post("/api/keymgmt/derive", "keymgmt:gen", body, status=403)
    assert "master" in answer["message"]
    for scope in ("keymgmt:derive", "keymgmt:ecdh", "keymgmt:gen"):  # all three accepted
        await session.post("/api/keymgmt/derive", scope, body)


async def test_derive_406_when_the_token_or_policy_refuses(client: Any) -> None:
    session = Session(client)
    base = await session.create("CURVE25519")
    signing = await session.create("SECP256R1", mode="ExDSA")
    _, peer = peer_pair("CURVE25519")
    _, p256 = peer_pair("SECP256R1")
    peer_b64 = base64.b64encode(peer).decode()

    async def refused(body: dict[str, Any], *needles: str) -> None:
        answer = await session.post("/api/keymgmt/derive", "keymgmt:gen", {"label": "x", **body}, status=406)
        for needle in needles:
            assert needle in answer["message"], answer

    await refused({"kid": "ab" * 16, "type": "AES256", "pubkey": peer_b64}, "no key with kid")
    await refused({"kid": signing, "type": "AES256", "pubkey": base64.b64encode(p256).decode()}, "cannot do ECDH")
    await refused({"kid": base, "type": "SHA3-256", "pubkey": peer_b64}, "CKM_SHA3_256_HMAC")
    await refused({"kid": base, "type": "MLKEM768", "pubkey": peer_b64}, "CKM_ML_KEM_KEY_PAIR_GEN")
    await refused({"kid": base, "type": "SECP256R1", "pubkey": peer_b64}, "hem.allow_asymmetric_derive")
    await refused({"kid": base, "type": "SHA2-512", "pubkey": peer_b64}, "CKD_NULL", "32-byte")


async def test_derive_406_names_hkdf_when_configured_without_it(aiohttp_client: Any, hem_tokens: TokenSet,
                                                                hem_settings: TokenSettings, tls: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, [hem_settings], hem='derive_recipe = "hkdf-sha256"')
    client = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    session = Session(client)
    base = await session.create("CURVE25519")
    _, peer = peer_pair("CURVE25519")
    answer = await session.post("/api/keymgmt/derive", "keymgmt:gen", {
        "kid": base, "label": "x", "type": "AES256", "pubkey": base64.b64encode(peer).decode()}, status=406)
    assert "CKM_HKDF_DERIVE" in answer["message"]


async def test_derive_409_when_the_token_cannot_serve(aiohttp_client: Any, softhsm_settings: Any, tls: Any, tmp_path: Path) -> None:
    """The PIN changed behind the gateway's back: the login cannot be re-established (409)."""
    settings = softhsm_settings("hem-raw2", name="raw2", sessions=2)
    tokens = TokenSet.open([settings])
    try:
        client = await tls_client(aiohttp_client, create_app(write_config(tmp_path, [settings]), tokens), tls)
        session = Session(client)
        base = await session.create("CURVE25519")
        _, peer = peer_pair("CURVE25519")
        headers = await session.headers("keymgmt:gen")
        token = tokens["raw2"]
        token.pool._pin = b"wrong-pin"
        token.module.fn.raw("C_CloseAllSessions")(token.pool.slot)
        try:
            response = await client.post("/api/keymgmt/derive", headers=headers, json={
                "kid": base, "label": "x", "type": "AES256", "pubkey": base64.b64encode(peer).decode()})
            answer = await ok(response, 409)
            assert "wrong-pin" not in answer["message"]
        finally:
            token.pool._pin = settings.pin.encode()  # type: ignore[union-attr]
        await session.post("/api/keymgmt/derive", "keymgmt:gen", {
            "kid": base, "label": "x", "type": "AES256", "pubkey": base64.b64encode(peer).decode()})
    finally:
        tokens.close()


async def test_derive_418_over_plain_http(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings,
                                          tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(write_config(tmp_path, [hem_settings]), hem_tokens))
    response = await client.post("/api/keymgmt/derive", json={"kid": "00" * 16, "label": "x", "type": "AES256"})
    answer = await ok(response, 418)
    assert "TLS" in answer["message"]
    # the open calls still answer over plain HTTP; logging in does not
    assert (await client.get("/api/system/status")).status == 200
    assert (await client.post("/api/auth/token", json={"auth": "x.y.z"})).status == 418


# --------------------------------------------------------------------------- asymmetric targets (opt-in policy)


async def asymmetric_client(aiohttp_client: Any, tokens: TokenSet, settings: TokenSettings, tls: Any, tmp_path: Path) -> Any:
    config = write_config(tmp_path, [settings], hem="allow_asymmetric_derive = true")
    return await tls_client(aiohttp_client, create_app(config, tokens), tls)


def software_seed(recipe: str, z: bytes, target: str, size: int) -> bytes:
    return recipe_key(recipe, z, target, size)


async def derived_pair(session: Session, base_type: str, target: str, mode: str | None = None) -> tuple[str, bytes, Any, bytes]:
    """(derived kid, its public key as get shows it, the peer, the base public key)."""
    base = await session.create(base_type, mode="ECDH" if base_type.startswith("SECP") else None)
    base_public = base64.b64decode((await session.get(f"/api/keymgmt/get/{base}", "keymgmt:gen"))["pubkey"])
    peer, peer_public = peer_pair(base_type)
    body = {"kid": base, "label": "asym", "type": target, "pubkey": base64.b64encode(peer_public).decode()}
    if mode:
        body["mode"] = mode
    kid = (await session.post("/api/keymgmt/derive", "keymgmt:gen", body))["kid"]
    shown = await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:gen")
    return kid, base64.b64decode(shown["pubkey"]), peer, base_public


async def test_asymmetric_targets_with_the_policy_on_softhsm(aiohttp_client: Any, hem_tokens: TokenSet,
                                                             hem_settings: TokenSettings, tls: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    session = Session(await asymmetric_client(aiohttp_client, hem_tokens, hem_settings, tls, tmp_path))
    # Ed25519 from X25519: the seed is Z itself (raw), the key signs in the token
    kid, public, peer, base_public = await derived_pair(session, "CURVE25519", "ED25519")
    seed = software_seed("raw", software_z("CURVE25519", peer, base_public), "ED25519", 32)
    expected = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert public == expected.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = base64.b64decode((await session.post("/api/crypto/exdsa/sign", f"keymgmt:use:{kid}", {
        "kid": kid, "msg": base64.b64encode(b"hello").decode(), "alg": "Ed25519"}))["sign"])
    expected.verify(signature, b"hello")
    held = hem_tokens["softhsm"].get_key(bytes.fromhex(kid))
    assert held.sensitive is True and held.extractable is False
    # SECP256R1 from P-256: the scalar is Z
    kid, public, peer, base_public = await derived_pair(session, "SECP256R1", "SECP256R1", "ECDH,ExDSA")
    d = int.from_bytes(software_z("SECP256R1", peer, base_public), "big")
    expected_point = ec.derive_private_key(d, ec.SECP256R1()).public_key()
    assert public == expected_point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    # X25519 from X25519: the new key does ECDH in the token
    kid, public, peer, base_public = await derived_pair(session, "CURVE25519", "CURVE25519")
    seed = software_seed("raw", software_z("CURVE25519", peer, base_public), "CURVE25519", 32)
    assert public == x25519.X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    other, other_public = peer_pair("CURVE25519")
    z = base64.b64decode((await session.post("/api/crypto/ecdh", f"keymgmt:use:{kid}", {
        "kid": kid, "pubkey": base64.b64encode(other_public).decode()}))["ecdh"])
    assert z == x25519.X25519PrivateKey.from_private_bytes(seed).exchange(other.public_key())
    # a seed shorter than the private key: 406 (as the device answers)
    base = await session.create("CURVE25519")
    _, peer_public = peer_pair("CURVE25519")
    answer = await session.post("/api/keymgmt/derive", "keymgmt:gen", {
        "kid": base, "label": "x", "type": "SECP384R1", "pubkey": base64.b64encode(peer_public).decode()}, status=406)
    assert "shorter" in answer["message"]


async def test_asymmetric_target_with_hkdf_on_nss(aiohttp_client: Any, nss_tokens: TokenSet, nss_settings: TokenSettings,
                                                  tls: Any, tmp_path: Path) -> None:
    session = Session(await asymmetric_client(aiohttp_client, nss_tokens, nss_settings, tls, tmp_path))
    kid, public, peer, base_public = await derived_pair(session, "SECP256R1", "SECP256R1", "ExDSA")
    seed = software_seed("hkdf-sha256", software_z("SECP256R1", peer, base_public), "SECP256R1", 32)
    expected = ec.derive_private_key(int.from_bytes(seed, "big"), ec.SECP256R1()).public_key()
    assert public == expected.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    signature = base64.b64decode((await session.post("/api/crypto/exdsa/sign", f"keymgmt:use:{kid}", {
        "kid": kid, "msg": base64.b64encode(b"nss").decode(), "alg": "SHA256WithECDSA"}))["sign"])
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    expected.verify(encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
                    b"nss", ec.ECDSA(hashes.SHA256()))


def test_out_of_range_seeds_are_refused() -> None:
    """HEM: "the generated seed needs to be validated ... this endpoint can fail without being an error"."""
    from gateway.core.hem.recipes import check_scalar
    from gateway.core.hem.types import KeyType
    from gateway.errors import TokenRefused

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    for bad in (0, order, 2**256 - 1):
        with pytest.raises(TokenRefused):
            check_scalar(KeyType.SECP256R1, bytearray(bad.to_bytes(32, "big")))
    check_scalar(KeyType.SECP256R1, bytearray((order - 1).to_bytes(32, "big")))
    check_scalar(KeyType.CURVE25519, bytearray(32))  # any 32 bytes are an X25519 key


async def test_409_until_the_token_lets_hem_initialise(aiohttp_client: Any, softhsm_settings: Any, tls: Any,
                                                       tmp_path: Path) -> None:
    """A token unusable at start: status says not initialised, HEM calls answer 409; once the
    token is back, the first call initialises HEM (no restart)."""
    settings = softhsm_settings("hem-raw2", name="raw2", sessions=2)
    tokens = TokenSet.open([settings])
    token = tokens["raw2"]
    try:
        token.pool._pin = b"wrong-pin"
        token.module.fn.raw("C_CloseAllSessions")(token.pool.slot)
        client = await tls_client(aiohttp_client, create_app(write_config(tmp_path, [settings]), tokens), tls)
        status = await ok(await client.get("/api/system/status"))
        assert status["inited"] is False
        answer = await ok(await client.get("/api/auth/token"), 409)
        assert "not initialised" in answer["message"]
        token.pool._pin = settings.pin.encode()  # type: ignore[union-attr]
        await Session(client).create("AES128")
        assert "inited" not in await ok(await client.get("/api/system/status"))
    finally:
        token.pool._pin = settings.pin.encode()  # type: ignore[union-attr]
        tokens.close()
