"""Roles and scopes, each rule by a real request: prefix match for key management,
exactly keymgmt:use:<kid> for key use, master denied on keys, ExtAuth subjects allowed."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.core.issuers import thumbprint
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
    tls,
    tls_client,
    write_config,
)


async def status_of(session: Session, method: str, path: str, scope: str, body: dict[str, Any] | None = None) -> int:
    headers = await session.headers(scope)
    if method == "GET":
        response = await session.client.get(path, headers=headers)
    elif method == "DELETE":
        response = await session.client.delete(path, headers=headers)
    else:
        response = await session.client.post(path, headers=headers, json=body or {})
    await response.read()
    return response.status


async def test_key_management_scopes_match_by_prefix(client: Any) -> None:
    session = Session(client)
    kid = await session.create("AES128", descr=base64.b64encode(b"access").decode())
    other = await session.create("AES128")
    create = {"label": "p", "type": "AES128"}
    cases = [
        ("POST", "/api/keymgmt/create", create, {"keymgmt:gen": 200, "keymgmt:gen.more": 200,  # the firmware's prefix quirk
                                                 "keymgmt:ge": 403, "keymgmt:list": 403, "keymgmt": 403}),
        ("GET", "/api/keymgmt/list", None, {"keymgmt:list": 200, "keymgmt:gen": 403, "keymgmt:search": 403}),
        ("POST", "/api/keymgmt/search", {"descr": "^" + base64.b64encode(b"access").decode()},
         {"keymgmt:search": 200, "keymgmt:list": 200, "keymgmt:get": 403}),
        ("GET", f"/api/keymgmt/get/{kid}", None, {"keymgmt:get": 200, f"keymgmt:use:{kid}": 200, "keymgmt:gen": 200,
                                                 f"keymgmt:use:{other}": 403, "keymgmt:list": 403}),
        ("POST", "/api/keymgmt/update", {"kid": kid, "label": "renamed"}, {"keymgmt:upd": 200, "keymgmt:gen": 403}),
        ("POST", "/api/keymgmt/import", {"label": "i", "type": "CURVE25519", "pubkey": base64.b64encode(os.urandom(32)).decode()},
         {"keymgmt:imp": 200, "keymgmt:gen": 403}),
        ("GET", "/api/logger/list", None, {"logger:get": 200, "keymgmt:gen": 403}),
    ]
    for method, path, body, expected in cases:
        for scope, status in expected.items():
            assert await status_of(session, method, path, scope, body) == status, (path, scope)
    assert await status_of(session, "DELETE", f"/api/keymgmt/delete/{other}", "keymgmt:gen") == 403
    assert await status_of(session, "DELETE", f"/api/keymgmt/delete/{other}", "keymgmt:del") == 200


async def test_key_use_needs_exactly_its_own_scope(client: Any) -> None:
    session = Session(client)
    kid = await session.create("SHA2-256")
    other = await session.create("SHA2-256")
    body = {"kid": kid, "msg": base64.b64encode(b"m").decode()}
    expected = {f"keymgmt:use:{kid}": 200, f"keymgmt:use:{kid.upper()}": 200,  # hex compares case-insensitively
                f"keymgmt:use:{kid}0": 403, f"keymgmt:use:{kid[:-1]}": 403, "keymgmt:use:": 403,
                f"keymgmt:use:{other}": 403, "keymgmt:gen": 403, "keymgmt": 403}
    for scope, status in expected.items():
        assert await status_of(session, "POST", "/api/crypto/hmac/hash", scope, body) == status, scope


async def test_master_is_denied_on_all_key_management_and_use(client: Any) -> None:
    kid = await Session(client).create("AES256")
    master = Session(client, MASTER_PASSPHRASE)
    calls = [
        ("POST", "/api/keymgmt/create", "keymgmt:gen", {"label": "m", "type": "AES128"}),
        ("POST", "/api/keymgmt/import", "keymgmt:imp", {"label": "m", "type": "CURVE25519", "pubkey": "AA=="}),
        ("GET", "/api/keymgmt/list", "keymgmt:list", None),
        ("POST", "/api/keymgmt/search", "keymgmt:search", {"descr": "AA=="}),
        ("GET", f"/api/keymgmt/get/{kid}", "keymgmt:get", None),
        ("POST", "/api/keymgmt/update", "keymgmt:upd", {"kid": kid, "label": "m"}),
        ("DELETE", f"/api/keymgmt/delete/{kid}", "keymgmt:del", None),
        ("POST", "/api/keymgmt/derive", "keymgmt:gen", {"kid": kid, "label": "m", "type": "AES128", "pubkey": "AA=="}),
        ("POST", "/api/crypto/cipher/encrypt", f"keymgmt:use:{kid}", {"kid": kid, "alg": "AES256-GCM", "msg": "AA=="}),
    ]
    for method, path, scope, body in calls:
        assert await status_of(master, method, path, scope, body) == 403, path
    assert await status_of(master, "GET", "/api/logger/list", "logger:get") == 200


@pytest.fixture
async def ext_client(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings, tls: Any,
                     tmp_path: Path) -> tuple[Any, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ext.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = write_config(tmp_path, [hem_settings], extra=f'[[hem.external_issuers]]\nname = "pairing"\nkeys = "{pem}"\n')
    return await tls_client(aiohttp_client, create_app(config, hem_tokens), tls), key


async def test_extauth_subjects_are_allowed_like_users(ext_client: tuple[Any, ec.EllipticCurvePrivateKey]) -> None:
    client, key = ext_client
    kid = await Session(client).create("CURVE25519")
    peer = base64.b64encode(os.urandom(32)).decode()

    def token(scope: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": base64.b64encode(os.urandom(16)).decode(), "scope": scope, "iat": now, "exp": now + 300}
        return bearer(jwt.encode(claims, key, algorithm="ES256", headers={"kid": thumbprint(key.public_key())}))

    derived = await ok(await client.post("/api/keymgmt/derive", headers=token("keymgmt:gen"),
                                         json={"kid": kid, "label": "x", "type": "AES128", "pubkey": peer}))
    assert (await client.get(f"/api/keymgmt/get/{derived['kid']}", headers=token(f"keymgmt:use:{derived['kid']}"))).status == 200
    assert (await client.get("/api/keymgmt/list", headers=token("keymgmt:gen"))).status == 403
