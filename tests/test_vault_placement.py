"""Several tokens at once: where new keys land, lookups across tokens, refusals naming the mechanism.

SoftHSM2 ("vault-2") has AES-GCM, Ed25519, secp256k1 and X25519 but neither
ChaCha20 nor HKDF; NSS softoken has ChaCha20-Poly1305 and HKDF but no EdDSA,
no secp256k1 and no CKO_DATA objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.core.vault import KeySpec
from gateway.core.vault.placement import missing_mechanisms
from gateway.core.vault.store import DATA_APPLICATION
from gateway.http.app import create_app
from gateway.token import Capabilities, TokenSet
from gateway.token.settings import TokenSettings
from tests.conftest import SoftHSMSettingsFactory
from tests.vault_support import Issuer, write_config

Client = TestClient[Any, Any]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
ISSUER = Issuer.new("ident")
SPECS = {"AES-256-GCM": ("symmetric", "encrypt/decrypt"), "ChaCha20": ("symmetric", "encrypt/decrypt"),
         "Ed25519": ("asymmetric", "sign/verify"), "secp256k1": ("asymmetric", "sign/verify"),
         "C25519": ("asymmetric", "sign/verify")}


@pytest.fixture(scope="module")
def softhsm(softhsm_settings: SoftHSMSettingsFactory) -> TokenSettings:
    return softhsm_settings("vault-2", name="softhsm")


@pytest.fixture(scope="module")
def both(softhsm: TokenSettings, nss_settings: TokenSettings) -> Iterator[TokenSet]:
    tokens = TokenSet.open([softhsm, nss_settings])
    yield tokens
    tokens.close()


async def app_client(aiohttp_client: ClientFactory, tmp_path: Path, settings: list[TokenSettings],
                     tokens: TokenSet) -> Client:
    directory = tmp_path / f"config-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    return await aiohttp_client(create_app(write_config(directory, settings, [ISSUER]), tokens))


async def create_key(client: Client, headers: dict[str, str], vault: str, spec: str) -> Any:
    key_type, usage = SPECS[spec]
    return await client.post(f"/api/v1/vaults/{vault}/keys", headers=headers,
                             json={"type": key_type, "usage": usage, "spec": spec, "name": spec})


async def new_vault(client: Client, headers: dict[str, str]) -> str:
    response = await client.post("/api/v1/vaults", json={"name": "v"}, headers=headers)
    assert response.status == 201
    return (await response.json())["id"]


def holder(tokens: TokenSet, key_id: str) -> list[str]:
    """Names of the tokens holding the key (asked directly, not through the gateway)."""
    return [t.name for t in tokens if t.find_key(uuid.UUID(key_id).bytes) is not None]


async def test_keys_land_on_the_first_token_that_can_serve_their_spec(
    aiohttp_client: ClientFactory, tmp_path: Path, softhsm: TokenSettings, nss_settings: TokenSettings,
    both: TokenSet,
) -> None:
    client = await app_client(aiohttp_client, tmp_path, [softhsm, nss_settings], both)
    owner = ISSUER.headers(f"application:{uuid.uuid4()}")
    vault = await new_vault(client, owner)
    # The vault record is a CKO_DATA object on SoftHSM2 (NSS softoken refuses those).
    records = both["softhsm"].list_data(DATA_APPLICATION)
    assert any(r.label == vault for r in records)

    placed = {}
    for spec in SPECS:
        response = await create_key(client, owner, vault, spec)
        assert response.status == 201, await response.json()
        placed[spec] = (await response.json())["id"]
    assert holder(both, placed["ChaCha20"]) == ["nss"]
    for spec in ("AES-256-GCM", "Ed25519", "secp256k1", "C25519"):
        assert holder(both, placed[spec]) == ["softhsm"], spec

    # A derived key stays on its parent's token.
    response = await client.post(f"/api/v1/vaults/{vault}/keys/{placed['ChaCha20']}/derive", headers=owner,
                                 json={"nonce": 9, "context": "c", "name": "child", "description": ""})
    assert response.status == 201
    assert holder(both, (await response.json())["id"]) == ["nss"]

    # Another gateway instance (empty lookup cache) finds every key on whichever token holds it ...
    other = await app_client(aiohttp_client, tmp_path, [softhsm, nss_settings], both)
    for spec, key_id in placed.items():
        response = await other.get(f"/api/v1/vaults/{vault}/keys/{key_id}", headers=owner)
        assert response.status == 200 and (await response.json())["spec"] == spec
    # ... and a key deleted there is gone here too, although this instance had it cached.
    assert (await other.delete(f"/api/v1/vaults/{vault}/keys/{placed['ChaCha20']}", headers=owner)).status == 204
    response = await client.get(f"/api/v1/vaults/{vault}/keys/{placed['ChaCha20']}", headers=owner)
    assert response.status == 404


async def test_config_order_decides(
    aiohttp_client: ClientFactory, tmp_path: Path, softhsm: TokenSettings, nss_settings: TokenSettings,
    both: TokenSet,
) -> None:
    # NSS softoken first: AES-256-GCM keys now land there, Ed25519 still on SoftHSM2.
    client = await app_client(aiohttp_client, tmp_path, [nss_settings, softhsm],
                              TokenSet([both["nss"], both["softhsm"]]))
    owner = ISSUER.headers(f"application:{uuid.uuid4()}")
    vault = await new_vault(client, owner)
    aes = await (await create_key(client, owner, vault, "AES-256-GCM")).json()
    ed = await (await create_key(client, owner, vault, "Ed25519")).json()
    assert holder(both, aes["id"]) == ["nss"]
    assert holder(both, ed["id"]) == ["softhsm"]


async def test_only_softhsm_refuses_chacha20_naming_the_mechanism(
    aiohttp_client: ClientFactory, tmp_path: Path, softhsm: TokenSettings, both: TokenSet,
) -> None:
    client = await app_client(aiohttp_client, tmp_path, [softhsm], TokenSet([both["softhsm"]]))
    owner = ISSUER.headers(f"organization:{uuid.uuid4()}")
    vault = await new_vault(client, owner)
    response = await create_key(client, owner, vault, "ChaCha20")
    assert response.status == 422
    message = (await response.json())["message"]
    assert message.startswith("no configured token can hold ChaCha20 keys: token 'softhsm' lacks ")
    for mechanism in ("CKM_CHACHA20_KEY_GEN", "CKM_CHACHA20_POLY1305", "CKM_HKDF_DERIVE"):
        assert mechanism in message
    assert (await create_key(client, owner, vault, "AES-256-GCM")).status == 201
    listed = await client.get(f"/api/v1/vaults/{vault}/keys", headers=owner)
    assert listed.headers["x-total-results-count"] == "1"  # nothing half-created by the refusal


async def test_only_nss_keeps_vault_records_as_marker_keys(
    aiohttp_client: ClientFactory, tmp_path: Path, nss_settings: TokenSettings, both: TokenSet,
) -> None:
    nss = both["nss"]
    assert not nss.capabilities.data_objects
    client = await app_client(aiohttp_client, tmp_path, [nss_settings], TokenSet([nss]))
    owner = ISSUER.headers(f"user:{uuid.uuid4()}")
    vault = await new_vault(client, owner)
    marker = nss.find_key(uuid.UUID(vault).bytes)
    assert marker is not None and marker.usage.encrypt is marker.usage.sign is marker.usage.derive is False
    listed = await client.get("/api/v1/vaults", headers=owner)
    assert [v["id"] for v in await listed.json()] == [vault]

    response = await create_key(client, owner, vault, "Ed25519")
    assert response.status == 422
    assert "CKM_EC_EDWARDS_KEY_PAIR_GEN (Ed25519)" in (await response.json())["message"]
    response = await create_key(client, owner, vault, "secp256k1")
    assert response.status == 422 and "secp256k1" in (await response.json())["message"]
    chacha = await create_key(client, owner, vault, "ChaCha20")
    assert chacha.status == 201
    assert (await client.delete(f"/api/v1/vaults/{vault}", headers=owner)).status == 204
    assert nss.find_key(uuid.UUID(vault).bytes) is None
    assert nss.find_key(uuid.UUID((await chacha.json())["id"]).bytes) is None
    assert (await client.get("/api/v1/vaults", headers=owner)).headers["x-total-results-count"] == "0"


def test_missing_mechanisms_per_spec(both: TokenSet) -> None:
    softhsm, nss = both["softhsm"].capabilities, both["nss"].capabilities
    assert missing_mechanisms(softhsm, KeySpec.CHACHA20) == [
        "CKM_CHACHA20_KEY_GEN", "CKM_CHACHA20_POLY1305", "CKM_HKDF_DERIVE"]
    assert missing_mechanisms(nss, KeySpec.CHACHA20) == []
    assert missing_mechanisms(nss, KeySpec.ED25519) == ["CKM_EC_EDWARDS_KEY_PAIR_GEN (Ed25519)", "CKM_EDDSA"]
    assert missing_mechanisms(softhsm, KeySpec.ED25519) == []
    assert missing_mechanisms(softhsm, KeySpec.BIP39) == ["BIP32"]
    # A token with nothing at all (no token is like this; it shows every requirement).
    assert missing_mechanisms(Capabilities(frozenset()), KeySpec.AES_256_GCM) == ["CKM_AES_KEY_GEN", "CKM_AES_GCM"]
