"""HEM key management: create, import, list, search, get, update, delete on real tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from gateway.http.app import create_app
from gateway.token import KeyClass, TokenSet
from gateway.token.settings import TokenSettings
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    Session,
    client,
    hem_settings,
    hem_tokens,
    ok,
    tls,
    tls_client,
    write_config,
)

# type -> (public key size in `get`, the usage the token object has)
CREATABLE = {
    "SECP256R1": 33, "SECP384R1": 49, "SECP521R1": 67, "SECP256K1": 33, "CURVE25519": 32, "CURVE448": 56,
    "ED25519": 32, "ED448": 57, "SHA2-256": None, "SHA2-384": None, "SHA2-512": None,
    "AES128": None, "AES192": None, "AES256": None,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("key_type", sorted(CREATABLE))
async def test_create_every_type_softhsm_holds(client: Any, hem_tokens: TokenSet, key_type: str) -> None:
    session = Session(client)
    kid = await session.create(key_type, f"t-{key_type}", mode="ECDH,ExDSA" if key_type.startswith("SECP") else None,
                               descr=b64(b"\x00\x01descr"))
    info = await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get")
    assert info["type"] == key_type and info["descr"] == b64(b"\x00\x01descr") and info["label"] == f"t-{key_type}"
    size = CREATABLE[key_type]
    assert (len(base64.b64decode(info["pubkey"])) if "pubkey" in info else None) == size
    # the key and its metadata are one token object: protected, and labelled with the metadata
    held = hem_tokens["softhsm"].get_key(bytes.fromhex(kid))
    assert held.sensitive is True and held.extractable is False
    assert held.key_class is (KeyClass.PRIVATE if size else KeyClass.SECRET)
    meta = json.loads(held.label)
    assert (meta["l"], meta["t"], meta["d"]) == (f"t-{key_type}", key_type, b64(b"\x00\x01descr"))
    if key_type.startswith("SECP"):
        assert held.usage.derive and held.usage.sign
    if key_type.startswith("AES"):
        assert held.usage.encrypt and not held.usage.sign


async def test_mode_sets_usage(client: Any, hem_tokens: TokenSet) -> None:
    session = Session(client)
    ecdh_only = await session.create("SECP256R1")  # the device's default mode is ECDH
    signing = await session.create("SECP256R1", mode="ExDSA")
    token = hem_tokens["softhsm"]
    assert token.get_key(bytes.fromhex(ecdh_only)).usage.derive and not token.get_key(bytes.fromhex(ecdh_only)).usage.sign
    assert token.get_key(bytes.fromhex(signing)).usage.sign and not token.get_key(bytes.fromhex(signing)).usage.derive


async def test_types_the_token_cannot_hold_are_406_naming_the_mechanism(client: Any, hem_tokens: TokenSet) -> None:
    session = Session(client)
    before = len(hem_tokens["softhsm"].list_keys())
    for key_type, mechanism in (("SHA3-256", "CKM_SHA3_256_HMAC"), ("SHA3-512", "CKM_SHA3_512_HMAC"),
                                ("MLKEM768", "CKM_ML_KEM_KEY_PAIR_GEN"), ("MLDSA65", "CKM_ML_DSA_KEY_PAIR_GEN")):
        answer = await session.post("/api/keymgmt/create", "keymgmt:gen", {"label": "x", "type": key_type}, status=406)
        assert mechanism in answer["message"]
    assert len(hem_tokens["softhsm"].list_keys()) == before  # nothing half-made


async def test_bad_create_requests_are_400(client: Any) -> None:
    session = Session(client)
    for body, needle in (
        ({"label": "x", "type": "RSA2048"}, "unknown key type"),  # the device answers 200 here
        ({"label": "x"}, "type is required"),
        ({"type": "AES128"}, "label is required"),
        ({"label": "", "type": "AES128"}, "label is required"),
        ({"label": "x" * 33, "type": "AES128"}, "label must be 1 to 32"),
        ({"label": "tab\there", "type": "AES128"}, "printable"),
        ({"label": "x", "type": "AES128", "descr": b64(bytes(65))}, "at most 64 bytes"),
        ({"label": "x", "type": "AES128", "descr": "!!"}, "base64"),
        ({"label": "x", "type": "SECP256R1", "mode": "ECDSA"}, "unknown mode"),
    ):
        answer = await session.post("/api/keymgmt/create", "keymgmt:gen", body, status=400)
        assert needle in answer["message"], (body, answer)
    assert len("x" * 32) == 32 and await session.create("AES128", "x" * 32)  # 32 is the limit


@pytest.fixture(scope="module")
def nss_tokens(nss_settings: TokenSettings) -> Iterator[TokenSet]:
    tokens = TokenSet.open([nss_settings])
    yield tokens
    tokens.close()


async def test_nss_refusals_name_what_it_lacks(aiohttp_client: Any, nss_tokens: TokenSet, nss_settings: TokenSettings,
                                               tls: Any, tmp_path: Path) -> None:
    client = await tls_client(aiohttp_client, create_app(write_config(tmp_path, [nss_settings]), nss_tokens), tls)
    session = Session(client)
    for key_type, mechanism in (("ED25519", "CKM_EC_EDWARDS_KEY_PAIR_GEN"), ("SECP256K1", "secp256k1"),
                                ("CURVE448", "X448")):
        answer = await session.post("/api/keymgmt/create", "keymgmt:gen", {"label": "x", "type": key_type}, status=406)
        assert mechanism in answer["message"], answer
    await session.create("CURVE25519")
    await session.create("AES256")


async def test_list_pages_with_totals(client: Any, hem_tokens: TokenSet) -> None:
    session = Session(client)
    mine = {await session.create("SECP256R1", f"list-{i}", mode="ECDH,ExDSA") for i in range(4)}
    first = await session.get("/api/keymgmt/list", "keymgmt:list")
    total = first["total"]
    assert first["offset"] == 0 and first["deleted"] == 0 and first["listed"] == len(first["list"]) == min(15, total)
    seen: list[dict[str, Any]] = []
    offset = 0
    while offset < total:
        page = await session.get(f"/api/keymgmt/list/{offset}/10", "keymgmt:list")
        assert page["total"] == total and page["offset"] == offset and page["listed"] <= 10
        seen += page["list"]
        offset += page["listed"]
    assert len({e["kid"] for e in seen}) == total and mine <= {e["kid"] for e in seen}
    entry = next(e for e in seen if e["kid"] in mine)
    assert entry["type"] == "PKEY,ECDH,ExDSA,SECP256R1" and isinstance(entry["created"], int) and "descr" not in entry
    assert set(entry) == {"kid", "created", "type", "label", "updated"}
    assert (await session.get(f"/api/keymgmt/list/{total}", "keymgmt:list"))["listed"] == 0
    await session.get("/api/keymgmt/list/-1", "keymgmt:list", status=400)
    await session.get("/api/keymgmt/list/x/2", "keymgmt:list", status=400)
    # the gateway's own keys (bearer, challenge, audit) are in the token but never listed
    assert len(hem_tokens["softhsm"].list_keys()) > total


async def test_pages_hold_at_most_15_keys(client: Any) -> None:
    # HEM answers at most 15 entries however many are asked for (list count, search limit).
    session = Session(client)
    tag = os.urandom(8)
    for _ in range(16):
        await session.create("AES128", descr=b64(tag))
    listed = await session.get("/api/keymgmt/list/0/100", "keymgmt:list")
    assert listed["total"] >= 16 and listed["listed"] == len(listed["list"]) == 15
    found = await session.post("/api/keymgmt/search", "keymgmt:search", {"descr": "^" + b64(tag) + "$", "limit": 100})
    assert found["listed"] == len(found["list"]) == 15


async def test_search_anchors(client: Any) -> None:
    session = Session(client)
    tag = os.urandom(8)
    kids = {
        "start": await session.create("AES128", descr=b64(tag + b"-tail")),
        "end": await session.create("AES128", descr=b64(b"head-" + tag)),
        "middle": await session.create("AES128", descr=b64(b"a" + tag + b"z")),
        "exact": await session.create("AES128", descr=b64(tag)),
    }

    async def found(needle: str, **extra: Any) -> set[str]:
        answer = await session.post("/api/keymgmt/search", "keymgmt:search", {"descr": needle, **extra})
        return {e["kid"] for e in answer["list"]}

    assert await found("^" + b64(tag)) == {kids["start"], kids["exact"]}
    assert await found(b64(tag) + "$") == {kids["end"], kids["exact"]}
    assert await found("^" + b64(tag) + "$") == {kids["exact"]}
    assert await found(b64(tag)) == set(kids.values())
    assert len(await found(b64(tag), limit=2)) == 2
    assert len(await found(b64(tag), offset=3)) == 1
    answer = await session.post("/api/keymgmt/search", "keymgmt:search", {"descr": b64(bytes(65))}, status=406)
    assert "64" in answer["message"]
    await session.post("/api/keymgmt/search", "keymgmt:search", {}, status=400)
    await session.post("/api/keymgmt/search", "keymgmt:search", {"descr": "AA==", "limit": -1}, status=400)


async def test_update_and_delete(client: Any) -> None:
    session = Session(client)
    kid = await session.create("ED25519", "before", descr=b64(b"d1"))
    before = await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get")
    assert await session.post("/api/keymgmt/update", "keymgmt:upd", {"kid": kid, "label": "after"}) == ""
    after = await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get")
    assert (after["label"], after["descr"], after["pubkey"]) == ("after", b64(b"d1"), before["pubkey"])
    assert after["updated"] >= before["updated"]
    await session.post("/api/keymgmt/update", "keymgmt:upd", {"kid": kid, "label": "after", "descr": b64(b"d2")})
    assert (await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get"))["descr"] == b64(b"d2")
    await session.post("/api/keymgmt/update", "keymgmt:upd", {"kid": kid}, status=400)  # label is always required
    await session.post("/api/keymgmt/update", "keymgmt:upd", {"kid": "cd" * 16, "label": "x"}, status=406)
    headers = await session.headers("keymgmt:del")
    assert (await client.delete(f"/api/keymgmt/delete/{kid}", headers=headers)).status == 200
    await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get", status=406)
    assert (await client.delete(f"/api/keymgmt/delete/{kid}", headers=headers)).status == 406
    assert (await client.delete("/api/keymgmt/delete/nothex", headers=headers)).status == 400
    await session.get("/api/keymgmt/get/0123", "keymgmt:get", status=400)


async def test_import_public_keys(client: Any) -> None:
    session = Session(client)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = p256.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    uncompressed = p256.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    body = {"label": "peer", "type": "SECP256R1", "mode": "ECDH,ExDSA", "pubkey": b64(compressed)}
    kid = (await session.post("/api/keymgmt/import", "keymgmt:imp", body))["kid"]
    assert kid == hashlib.sha1(compressed).digest()[:16].hex()  # noqa: S324 - HEM's kid of an import
    info = await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get")
    assert base64.b64decode(info["pubkey"]) == compressed and info["origin"] == "imported"
    answer = await session.post("/api/keymgmt/import", "keymgmt:imp", {**body, "pubkey": b64(uncompressed)}, status=406)
    assert "exists already" in answer["message"]  # the same key in another encoding is a duplicate
    listed = await session.get("/api/keymgmt/list/0/15", "keymgmt:list")
    for x_type, public in (("CURVE25519", x25519.X25519PrivateKey.generate().public_key()),
                           ("ED25519", ed25519.Ed25519PrivateKey.generate().public_key())):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        got = (await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "p", "type": x_type, "pubkey": b64(raw)}))["kid"]
        assert got == hashlib.sha1(raw).digest()[:16].hex()  # noqa: S324
    assert listed["total"] >= 1
    for bad, status in ((b"\x05" + bytes(32), 400), (b"\x04" + bytes(64), 400), (b"\x04" + bytes(10), 400)):
        await session.post("/api/keymgmt/import", "keymgmt:imp", {**body, "pubkey": b64(bad)}, status=status)
    answer = await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "s", "type": "AES256", "pubkey": b64(bytes(32))},
                                status=406)
    assert "only public keys" in answer["message"]
    await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "s", "type": "SECP256R1"}, status=400)


async def test_imported_key_lists_without_pkey(client: Any) -> None:
    session = Session(client)
    raw = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = (await session.post("/api/keymgmt/import", "keymgmt:imp", {"label": "imp", "type": "CURVE25519", "pubkey": b64(raw),
                                                                       "descr": b64(b"imported-marker")}))["kid"]
    found = await session.post("/api/keymgmt/search", "keymgmt:search", {"descr": "^" + b64(b"imported-marker") + "$"})
    entry = next(e for e in found["list"] if e["kid"] == kid)
    assert entry["type"] == "ECDH,CURVE25519"
