"""The Provide Vault dialect over HTTP, on real tokens: SoftHSM2 ("vault") first, NSS softoken second.

Every cryptographic result is checked in software without extracting a key
from the token: derived keys are used through the API (encrypt, sign) and the
result is checked with keys computed independently (``cryptography``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.http.app import create_app
from gateway.token import TokenSet
from gateway.token.settings import TokenSettings
from tests.conftest import SoftHSMSettingsFactory
from tests.vault_support import SEED_DERIVE_BODY, SEED_FIELDS, Issuer, write_config

Client = TestClient[Any, Any]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

ES_ISSUER = Issuer.new("ident")
RS_ISSUER = Issuer.new("ident-rsa", "RS256")
UNTRUSTED = Issuer.new("stranger")
KIND = {"AES-256-GCM": ("symmetric", "encrypt/decrypt"), "ChaCha20": ("symmetric", "encrypt/decrypt"),
        "Ed25519": ("asymmetric", "sign/verify"), "secp256k1": ("asymmetric", "sign/verify"),
        "C25519": ("asymmetric", "sign/verify")}


@pytest.fixture(scope="module")
def settings(softhsm_settings: SoftHSMSettingsFactory, nss_settings: TokenSettings) -> list[TokenSettings]:
    return [softhsm_settings("vault", name="softhsm"), nss_settings]


@pytest.fixture(scope="module")
def tokens(settings: list[TokenSettings]) -> Iterator[TokenSet]:
    opened = TokenSet.open(settings)
    yield opened
    opened.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tokens: TokenSet, settings: list[TokenSettings], tmp_path: Path) -> Client:
    config = write_config(tmp_path, settings, [ES_ISSUER, RS_ISSUER], allow_secret_import=True)
    return await aiohttp_client(create_app(config, tokens))


def app_owner() -> dict[str, str]:
    """Headers of a fresh application (so each test sees only its own vaults)."""
    return ES_ISSUER.headers(f"application:{uuid.uuid4()}")


async def ok(response: Any, status: int) -> Any:
    body = await response.json() if response.status != 204 else None
    assert response.status == status, body
    return body


async def make_vault(client: Client, headers: dict[str, str], name: str = "v") -> dict[str, Any]:
    return await ok(await client.post("/api/v1/vaults", json={"name": name, "description": "d"}, headers=headers), 201)


async def make_key(client: Client, headers: dict[str, str], vault_id: str, spec: str, **extra: Any) -> dict[str, Any]:
    key_type, usage = KIND[spec]
    body = {"type": key_type, "usage": usage, "spec": spec, "name": f"{spec} key", "description": "k", **extra}
    return await ok(await client.post(f"/api/v1/vaults/{vault_id}/keys", json=body, headers=headers), 201)


async def derive(client: Client, headers: dict[str, str], vault_id: str, key_id: str, **body: Any) -> Any:
    return await client.post(f"/api/v1/vaults/{vault_id}/keys/{key_id}/derive", json=body, headers=headers)


async def encrypt(client: Client, headers: dict[str, str], vault_id: str, key_id: str, data: str,
                  nonce: bytes | None = None) -> bytes:
    body: dict[str, Any] = {"data": data}
    if nonce is not None:
        body["nonce"] = nonce.hex()
    answer = await ok(await client.post(f"/api/v1/vaults/{vault_id}/keys/{key_id}/encrypt", json=body,
                                        headers=headers), 200)
    return bytes.fromhex(answer["data"])


def software_child(parent: bytes, nonce: int, context: str) -> bytes:
    """The derive recipe computed independently: HKDF-SHA256(salt = nonce BE32, info = context)."""
    return HKDF(hashes.SHA256(), 32, nonce.to_bytes(4, "big"), context.encode()).derive(parent)


# --------------------------------------------------------------------------- vaults


async def test_vault_lifecycle_and_paging(client: Client) -> None:
    owner = app_owner()
    created = [await make_vault(client, owner, f"v{i}") for i in range(3)]
    assert set(created[0]) == {"id", "created_at", "name", "description"}
    uuid.UUID(created[0]["id"])
    assert "T" in created[0]["created_at"] and created[0]["created_at"].endswith("+00:00")

    page = await client.get("/api/v1/vaults?page=2&rpp=2", headers=owner)
    assert page.headers["x-total-results-count"] == "3"
    assert [v["name"] for v in await ok(page, 200)] == ["v2"]
    everything = await ok(await client.get("/api/v1/vaults", headers=owner), 200)
    assert [v["id"] for v in everything] == [v["id"] for v in created]

    assert (await client.delete(f"/api/v1/vaults/{created[1]['id']}", headers=owner)).status == 204
    left = await client.get("/api/v1/vaults", headers=owner)
    assert left.headers["x-total-results-count"] == "2"
    assert (await client.delete(f"/api/v1/vaults/{created[1]['id']}", headers=owner)).status == 404
    for bad in ("page=0", "rpp=101", "rpp=x", "page=-1"):
        response = await client.get(f"/api/v1/vaults?{bad}", headers=owner)
        assert response.status == 400 and "must be an integer" in (await response.json())["message"]


async def test_vault_create_needs_a_name(client: Client) -> None:
    response = await client.post("/api/v1/vaults", json={"description": "x"}, headers=app_owner())
    assert response.status == 422 and await response.json() == {"message": "name is required"}
    response = await client.post("/api/v1/vaults", data=b"{not json", headers=app_owner())
    assert response.status == 400 and "not valid JSON" in (await response.json())["message"]


async def test_deleting_a_vault_destroys_its_keys(client: Client, tokens: TokenSet) -> None:
    owner = app_owner()
    vault = await make_vault(client, owner)
    keys = [await make_key(client, owner, vault["id"], spec) for spec in ("AES-256-GCM", "ChaCha20", "Ed25519")]
    assert (await client.delete(f"/api/v1/vaults/{vault['id']}", headers=owner)).status == 204
    for key in keys:
        assert all(t.find_key(uuid.UUID(key["id"]).bytes) is None for t in tokens)


# --------------------------------------------------------------------------- keys


async def test_keys_create_get_list_filter_delete(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    made = {spec: await make_key(client, owner, vault, spec) for spec in KIND}
    aes = made["AES-256-GCM"]
    assert set(aes) == SEED_FIELDS
    assert (aes["vault_id"], aes["type"], aes["usage"], aes["spec"], aes["name"]) == (
        vault, "symmetric", "encrypt/decrypt", "AES-256-GCM", "AES-256-GCM key")
    assert len(bytes.fromhex(made["Ed25519"]["public_key"])) == 32
    assert bytes.fromhex(made["secp256k1"]["public_key"])[:1] == b"\x04"
    assert len(bytes.fromhex(made["C25519"]["public_key"])) == 32

    got = await ok(await client.get(f"/api/v1/vaults/{vault}/keys/{aes['id']}", headers=owner), 200)
    assert got == aes
    listed = await client.get(f"/api/v1/vaults/{vault}/keys", headers=owner)
    assert listed.headers["x-total-results-count"] == str(len(KIND))
    assert [k["id"] for k in await ok(listed, 200)] == [k["id"] for k in made.values()]
    only = await ok(await client.get(f"/api/v1/vaults/{vault}/keys?spec=ChaCha20", headers=owner), 200)
    assert [k["id"] for k in only] == [made["ChaCha20"]["id"]]
    symmetric = await ok(await client.get(f"/api/v1/vaults/{vault}/keys?type=symmetric", headers=owner), 200)
    assert {k["spec"] for k in symmetric} == {"AES-256-GCM", "ChaCha20"}
    assert (await client.get(f"/api/v1/vaults/{vault}/keys?spec=nope", headers=owner)).status == 422

    assert (await client.delete(f"/api/v1/vaults/{vault}/keys/{aes['id']}", headers=owner)).status == 204
    assert (await client.get(f"/api/v1/vaults/{vault}/keys/{aes['id']}", headers=owner)).status == 404
    assert (await client.delete(f"/api/v1/vaults/{vault}/keys/{aes['id']}", headers=owner)).status == 404


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20"}, 422, "name is required"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "name": "n"}, 422, "spec is required"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "DES", "name": "n"}, 422, "unknown spec 'DES'"),
        ({"type": "asymmetric", "usage": "sign/verify", "spec": "ChaCha20", "name": "n"}, 422, "ChaCha20 keys are symmetric"),
        ({"type": "symmetric", "usage": "sign/verify", "spec": "AES-256-GCM", "name": "n"}, 422, "encrypt/decrypt"),
        ({"type": "asymmetric", "usage": "sign/verify", "spec": "BIP39", "name": "n"}, 422, "BIP39 keys are not supported"),
        ({"type": "asymmetric", "usage": "sign/verify", "spec": "BLS12-381", "name": "n"}, 422, "BLS12-381"),
        ({"type": "asymmetric", "usage": "sign/verify", "spec": "babyJubJub", "name": "n"}, 422, "babyJubJub"),
        ({"type": "asymmetric", "usage": "encrypt/decrypt", "spec": "RSA-2048", "name": "n"}, 422, "RSA-2048"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": 7}, 400, "name must be a string"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "n", "vault_id": "x"}, 422,
         "vault_id cannot be set"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "n", "secret": "zz"}, 400,
         "not valid hex"),
        ({"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "n", "secret": "00" * 16}, 400,
         "32 bytes"),
    ],
)
async def test_key_create_refusals(client: Client, body: dict[str, Any], status: int, fragment: str) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    response = await client.post(f"/api/v1/vaults/{vault}/keys", json=body, headers=owner)
    answer = await response.json()
    assert response.status == status, answer
    assert fragment in answer["message"]


# --------------------------------------------------------------------------- derive


async def test_derive_answers_the_seed_fields_and_get_shows_the_recipe(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    parent = await make_key(client, owner, vault, "ChaCha20")
    response = await client.post(f"/api/v1/vaults/{vault}/keys/{parent['id']}/derive", data=SEED_DERIVE_BODY,
                                 headers={**owner, "Content-Type": "application/json"})
    child = await ok(response, 201)
    assert set(child) == SEED_FIELDS
    assert (child["vault_id"], child["type"], child["usage"], child["spec"], child["name"], child["description"]) == (
        vault, "symmetric", "encrypt/decrypt", "ChaCha20", "private chat", "this is a secure channel")
    detail = await ok(await client.get(f"/api/v1/vaults/{vault}/keys/{child['id']}", headers=owner), 200)
    assert detail["derivation"] == {
        "parent_id": parent["id"], "nonce": 1, "context": "channel-6852386c-8a3d-41c6-aa0e-766a31a8faaf",
        "kdf": "HKDF-SHA256", "mechanism": "CKM_HKDF_DERIVE", "salt": "00000001"}

    # No nonce: a random one, recorded.
    random = await ok(await derive(client, owner, vault, parent["id"], context="c", name="n", description=""), 201)
    recorded = (await ok(await client.get(f"/api/v1/vaults/{vault}/keys/{random['id']}", headers=owner), 200))
    assert 0 <= recorded["derivation"]["nonce"] <= 2**32 - 1


async def test_derived_key_matches_software_hkdf_and_is_deterministic(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    secret = os.urandom(32)
    parent = await make_key(client, owner, vault, "ChaCha20", secret=secret.hex())
    context = "channel-6852386c-8a3d-41c6-aa0e-766a31a8faaf"
    nonce12 = os.urandom(12)

    children = [await ok(await derive(client, owner, vault, parent["id"], nonce=4000000000, context=context,
                                      name=f"c{i}", description="d"), 201) for i in range(2)]
    assert children[0]["id"] != children[1]["id"]
    blobs = [await encrypt(client, owner, vault, c["id"], "attack at dawn", nonce12) for c in children]
    assert blobs[0] == blobs[1]  # same parent, nonce and context: the same key
    assert blobs[0][:12] == nonce12
    expected = software_child(secret, 4000000000, context)
    assert ChaCha20Poly1305(expected).decrypt(nonce12, blobs[0][12:], None) == b"attack at dawn"

    other = await ok(await derive(client, owner, vault, parent["id"], nonce=4000000000, context=context + "-2",
                                  name="c3", description="d"), 201)
    blob = await encrypt(client, owner, vault, other["id"], "attack at dawn", nonce12)
    assert blob != blobs[0]  # another context: another key
    other_key = software_child(secret, 4000000000, context + "-2")
    assert ChaCha20Poly1305(other_key).decrypt(nonce12, blob[12:], None) == b"attack at dawn"

    # Another nonce, same context: another key too.
    third = await ok(await derive(client, owner, vault, parent["id"], nonce=0, context=context, name="c4",
                                  description="d"), 201)
    blob = await encrypt(client, owner, vault, third["id"], "attack at dawn", nonce12)
    assert ChaCha20Poly1305(software_child(secret, 0, context)).decrypt(nonce12, blob[12:], None) == b"attack at dawn"

    # Children derive too (they are ChaCha20 keys); the chain matches software.
    grandchild = await ok(await derive(client, owner, vault, children[0]["id"], nonce=7, context="g", name="g",
                                       description="d"), 201)
    blob = await encrypt(client, owner, vault, grandchild["id"], "deeper", nonce12)
    assert ChaCha20Poly1305(software_child(expected, 7, "g")).decrypt(nonce12, blob[12:], None) == b"deeper"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"nonce": "1", "context": "c", "name": "n", "description": "d"}, 400,
         "nonce must be a JSON integer from 0 to 4294967295, got a string"),
        ({"nonce": 2**32, "context": "c", "name": "n", "description": "d"}, 400,
         "nonce must be a JSON integer from 0 to 4294967295, got 4294967296"),
        ({"nonce": -1, "context": "c", "name": "n", "description": "d"}, 400,
         "nonce must be a JSON integer from 0 to 4294967295, got -1"),
        ({"nonce": 1.5, "context": "c", "name": "n", "description": "d"}, 400,
         "nonce must be a JSON integer from 0 to 4294967295, got a number with a fraction or exponent"),
        ({"nonce": True, "context": "c", "name": "n", "description": "d"}, 400,
         "nonce must be a JSON integer from 0 to 4294967295, got a boolean"),
        ({"nonce": 1, "name": "n", "description": "d"}, 422, "context is required"),
        ({"nonce": 1, "context": "", "name": "n", "description": "d"}, 422, "context must not be empty"),
        ({"nonce": 1, "context": "c", "description": "d"}, 422, "name is required"),
        ({"nonce": 1, "context": "c", "name": "n"}, 422, "description is required"),
        ({"nonce": 1, "context": 5, "name": "n", "description": "d"}, 400, "context must be a string"),
    ],
)
async def test_derive_refusals(client: Client, body: dict[str, Any], status: int, message: str) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    parent = await make_key(client, owner, vault, "ChaCha20")
    response = await derive(client, owner, vault, parent["id"], **body)
    assert response.status == status
    assert await response.json() == {"message": message}


async def test_only_chacha20_keys_derive(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    for spec in ("AES-256-GCM", "Ed25519"):
        key = await make_key(client, owner, vault, spec)
        response = await derive(client, owner, vault, key["id"], nonce=1, context="c", name="n", description="d")
        assert response.status == 400
        assert await response.json() == {"message": "key does not support derivation"}


# --------------------------------------------------------------------------- encrypt / decrypt


async def test_aes_256_gcm_encrypt_decrypt_against_software(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    secret = os.urandom(32)
    key = await make_key(client, owner, vault, "AES-256-GCM", secret=secret.hex())
    blob = await encrypt(client, owner, vault, key["id"], "héllo wörld")
    assert len(blob) == 12 + len("héllo wörld".encode()) + 16
    assert AESGCM(secret).decrypt(blob[:12], blob[12:], None) == "héllo wörld".encode()
    # And back through the token, also for a ciphertext made in software.
    nonce = os.urandom(12)
    outside = nonce + AESGCM(secret).encrypt(nonce, b"from software", None)
    for data, plain in ((blob, "héllo wörld"), (outside, "from software")):
        answer = await ok(await client.post(f"/api/v1/vaults/{vault}/keys/{key['id']}/decrypt",
                                            json={"data": data.hex()}, headers=owner), 200)
        assert answer == {"data": plain}


async def test_chacha20_round_trip_and_refusals(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    key = (await make_key(client, owner, vault, "ChaCha20"))["id"]
    url = f"/api/v1/vaults/{vault}/keys/{key}"
    blob = await encrypt(client, owner, vault, key, "")
    assert len(blob) == 28
    assert await ok(await client.post(url + "/decrypt", json={"data": blob.hex()}, headers=owner), 200) == {"data": ""}

    tampered = bytearray(await encrypt(client, owner, vault, key, "secret"))
    tampered[-1] ^= 1
    response = await client.post(url + "/decrypt", json={"data": tampered.hex()}, headers=owner)
    assert response.status == 400 and "not authentic" in (await response.json())["message"]
    for body, status, fragment in (({"data": "00" * 10}, 400, "shorter than nonce and tag"),
                                   ({"data": "xyz"}, 400, "not valid hex"), ({}, 422, "data is required")):
        response = await client.post(url + "/decrypt", json=body, headers=owner)
        assert response.status == status and fragment in (await response.json())["message"]
    response = await client.post(url + "/encrypt", json={"data": "x", "nonce": "00" * 8}, headers=owner)
    assert response.status == 400 and "12 bytes" in (await response.json())["message"]
    signer = (await make_key(client, owner, vault, "Ed25519"))["id"]
    response = await client.post(f"/api/v1/vaults/{vault}/keys/{signer}/encrypt", json={"data": "x"}, headers=owner)
    assert response.status == 400 and "cannot encrypt" in (await response.json())["message"]


# --------------------------------------------------------------------------- sign / verify


async def test_ed25519_and_secp256k1_signatures_verify_in_software(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    message = b"a message \x00\xff"
    for spec in ("Ed25519", "secp256k1"):
        key = await make_key(client, owner, vault, spec)
        url = f"/api/v1/vaults/{vault}/keys/{key['id']}"
        signed = await ok(await client.post(url + "/sign", json={"message": message.hex()}, headers=owner), 201)
        signature = bytes.fromhex(signed["signature"])
        public = bytes.fromhex(key["public_key"])
        if spec == "Ed25519":
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        else:
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public)
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            point.verify(der, message, ec.ECDSA(hashes.SHA256()))
            with pytest.raises(InvalidSignature):
                point.verify(der, message + b"!", ec.ECDSA(hashes.SHA256()))
        good = {"message": message.hex(), "signature": signature.hex()}
        assert await ok(await client.post(url + "/verify", json=good, headers=owner), 200) == {"verified": True}
        bad = {"message": (message + b"!").hex(), "signature": signature.hex()}
        assert await ok(await client.post(url + "/verify", json=bad, headers=owner), 200) == {"verified": False}
        response = await client.post(url + "/sign", json={"message": "00", "signature": "00"}, headers=owner)
        assert response.status == 422
    aes = (await make_key(client, owner, vault, "AES-256-GCM"))["id"]
    response = await client.post(f"/api/v1/vaults/{vault}/keys/{aes}/sign", json={"message": "00"}, headers=owner)
    assert response.status == 400 and "cannot sign" in (await response.json())["message"]


# --------------------------------------------------------------------------- authorization


async def test_ownership_isolation_between_applications_and_organizations(client: Client) -> None:
    org = uuid.uuid4()
    app_a = ES_ISSUER.headers(f"application:{uuid.uuid4()}", prvd={"organization_id": str(org)})
    app_b = RS_ISSUER.headers(f"application:{uuid.uuid4()}", prvd={"organization_id": str(org)})
    organization = ES_ISSUER.headers(f"organization:{org}")
    user = ES_ISSUER.headers(f"user:{uuid.uuid4()}")

    vault_a = (await make_vault(client, app_a))["id"]
    key_a = (await make_key(client, app_a, vault_a, "ChaCha20"))["id"]
    vault_org = (await make_vault(client, organization))["id"]
    key_org = (await make_key(client, organization, vault_org, "ChaCha20"))["id"]
    vault_user = (await make_vault(client, user))["id"]

    # Each caller lists only its own vaults (an application's vault is not its organization's).
    for headers, own in ((app_a, vault_a), (organization, vault_org), (user, vault_user)):
        assert [v["id"] for v in await ok(await client.get("/api/v1/vaults", headers=headers), 200)] == [own]
    assert await ok(await client.get("/api/v1/vaults", headers=app_b), 200) == []

    for stranger, vault, key in ((app_b, vault_a, key_a), (organization, vault_a, key_a), (app_a, vault_org, key_org)):
        base = f"/api/v1/vaults/{vault}"
        calls = [
            client.get(f"{base}/keys", headers=stranger),
            client.post(f"{base}/keys", json={"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20",
                                              "name": "n"}, headers=stranger),
            client.get(f"{base}/keys/{key}", headers=stranger),
            client.post(f"{base}/keys/{key}/derive", json={"nonce": 1, "context": "c", "name": "n",
                                                           "description": "d"}, headers=stranger),
            client.post(f"{base}/keys/{key}/encrypt", json={"data": "x"}, headers=stranger),
            client.delete(f"{base}/keys/{key}", headers=stranger),
            client.delete(base, headers=stranger),
        ]
        for call in calls:
            response = await call
            assert response.status == 404
            assert await response.json() == {"message": "vault not found"}
    # Still there for the owner.
    assert (await client.get(f"/api/v1/vaults/{vault_a}/keys/{key_a}", headers=app_a)).status == 200


async def test_not_found_paths(client: Client) -> None:
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    other_vault = (await make_vault(client, owner))["id"]
    key = (await make_key(client, owner, vault, "AES-256-GCM"))["id"]
    cases = [
        (f"/api/v1/vaults/{uuid.uuid4()}/keys", "vault not found"),
        ("/api/v1/vaults/not-a-uuid/keys", "vault not found"),
        (f"/api/v1/vaults/{vault}/keys/{uuid.uuid4()}", "key not found"),
        (f"/api/v1/vaults/{vault}/keys/not-a-uuid", "key not found"),
        (f"/api/v1/vaults/{other_vault}/keys/{key}", "key not found"),  # the key lives in another vault
    ]
    for path, message in cases:
        response = await client.get(path, headers=owner)
        assert response.status == 404
        assert await response.json() == {"message": message}


async def test_unauthorized(client: Client) -> None:
    no_owner = [
        ES_ISSUER.headers(None),  # no sub, no prvd
        ES_ISSUER.headers("application:not-a-uuid"),
        ES_ISSUER.headers("robot:6f1b2c9e-3a44-4c1e-9d59-4f4c2a1b7e10"),
        ES_ISSUER.headers(f"application:{uuid.UUID(int=0)}"),
    ]
    for headers in no_owner:
        response = await client.get("/api/v1/vaults", headers=headers)
        assert response.status == 401
        assert await response.json() == {"message": "unauthorized"}
    refused = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not.a.jwt"},
        UNTRUSTED.headers(f"application:{uuid.uuid4()}"),
        ES_ISSUER.headers(f"application:{uuid.uuid4()}", lifetime=-3600),
    ]
    for headers in refused:
        response = await client.post("/api/v1/vaults", json={"name": "x"}, headers=headers)
        assert response.status == 401
        assert (await response.json())["message"].startswith("unauthorized: ")
    # The owner may come from prvd alone.
    prvd_only = ES_ISSUER.headers(None, prvd={"user_id": str(uuid.uuid4())})
    assert (await client.get("/api/v1/vaults", headers=prvd_only)).status == 200


async def test_secret_import_needs_the_flag(aiohttp_client: ClientFactory, tokens: TokenSet,
                                            settings: list[TokenSettings], tmp_path: Path) -> None:
    config = write_config(tmp_path, settings, [ES_ISSUER], allow_secret_import=False)
    client = await aiohttp_client(create_app(config, tokens))
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    body = {"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "n", "secret": "00" * 32}
    response = await client.post(f"/api/v1/vaults/{vault}/keys", json=body, headers=owner)
    assert response.status == 403
    assert await response.json() == {"message": "importing key material is disabled (vault.allow_secret_import = false)"}
    assert await ok(await client.get(f"/api/v1/vaults/{vault}/keys", headers=owner), 200) == []


async def test_derive_and_refusals_feed_the_service_metrics(client: Client) -> None:
    from gateway.core import metrics

    def value(counter: object, dialect: str) -> float:
        return counter.labels(dialect=dialect)._value.get()  # type: ignore[attr-defined]

    derived, refused = value(metrics.keys_derived, "vault"), value(metrics.auth_failures, "vault")
    owner = app_owner()
    vault = (await make_vault(client, owner))["id"]
    parent = await make_key(client, owner, vault, "ChaCha20")
    await ok(await derive(client, owner, vault, parent["id"], nonce=1, context="c", name="n", description="d"), 201)
    assert value(metrics.keys_derived, "vault") == derived + 1
    assert (await client.get("/api/v1/vaults", headers={"Authorization": "Bearer nonsense"})).status == 401
    assert value(metrics.auth_failures, "vault") == refused + 1
