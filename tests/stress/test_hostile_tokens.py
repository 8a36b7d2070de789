"""Hostile bearer tokens against both dialects: every forgery is 401, every valid token used
beyond its rights is 403, and nothing is ever a 5xx.

HEM accepts its own HS256 bearer tokens (an HMAC in the token) and tokens of an external
issuer; the Vault dialect accepts tokens of its issuers.  Both issuers here use one RSA key
(RS256) and require an ``iss`` and an ``aud``, so the classic confusions can be tried: the
RSA public key as an HMAC secret, ``alg: none``, a ``kid`` nobody configured.

A token too big for an HTTP header line (aiohttp's limit, 8190 bytes) is refused by the HTTP
parser with 400 before any dialect sees it; the "huge" tokens here fit in a header and are
over the dialects' own limits (HEM 8,192 characters) or just garbage of that size.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.core.issuers import thumbprint
from gateway.http.app import create_app
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    Session,
    TlsFiles,
    login,
    service_of,
    tls,
    tls_client,
    write_config,
)
from tests.stress import report

IDP_ISS, IDP_AUD = "https://idp.example", "gateway"
VAULT_ISS, VAULT_AUD = "https://ident.example", "vault"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
KID = thumbprint(RSA_KEY.public_key())
COUNTS: Counter[str] = Counter()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(token: str) -> list[str]:
    return token.split(".")


def forge(header: dict[str, Any], claims: dict[str, Any], *, hmac_key: bytes | None = None) -> str:
    """A compact JWS with any header; HS256 over it with ``hmac_key``, else an empty signature."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return signing_input + "." + b64url(signature)


def rs256(claims: dict[str, Any], kid: str = KID) -> str:
    return jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": kid})


def tamper(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload."""
    head, body, sig = segments(token)
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"


def hostile(valid: str, good: dict[str, Any], iss: str, aud: str) -> dict[str, str]:
    """Forgeries of a dialect's JWT, from a valid one and its claims."""
    now = int(time.time())
    return {
        "alg none": forge({"alg": "none", "typ": "JWT", "kid": KID}, good),
        "alg none, no signature part": forge({"alg": "none"}, good).rsplit(".", 1)[0] + ".",
        "HS256 keyed with the RSA public key": forge({"alg": "HS256", "typ": "JWT", "kid": KID}, good, hmac_key=RSA_PEM),
        "expired": rs256({**good, "exp": now - 3600, "iat": now - 7200}),
        "nbf in the future": rs256({**good, "nbf": now + 3600}),
        "wrong issuer": rs256({**good, "iss": "https://evil.example"}),
        "wrong audience": rs256({**good, "aud": "someone-else"}),
        "tampered payload": tamper(valid, sub=good["sub"] + "x", exp=now + 99999),
        "unknown kid": rs256(good, kid="not-a-configured-key"),
        "huge (8,000 characters)": "e" * 8000,
        "huge (~7,800 characters), tampered": tamper(rs256({**good, "pad": "x" * 5500}), pad="y" * 5500),
        "missing exp": rs256({k: v for k, v in good.items() if k != "exp"}),
        "missing iat": rs256({k: v for k, v in good.items() if k != "iat"}),
        "not a JWT": "definitely-not-a-jwt",
        "RS256 signed by another key": jwt.encode(good, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                                  algorithm="RS256", headers={"kid": KID}),
    }


@pytest.fixture(scope="module")
def stress_tokens(softhsm_settings: Any) -> Iterator[Any]:
    from gateway.token import TokenSet

    tokens = TokenSet.open([softhsm_settings("stress", name="softhsm")])
    yield tokens
    tokens.close()


@pytest.fixture
async def client(aiohttp_client: Any, stress_tokens: Any, softhsm_settings: Any, tls: TlsFiles, tmp_path: Path) -> Any:
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(RSA_PEM)
    hem = (f'[[hem.external_issuers]]\nname = "idp"\nkeys = "{pem}"\niss = "{IDP_ISS}"\naud = "{IDP_AUD}"\n')
    vault = (f'[vault]\nallow_secret_import = false\n[[vault.issuers]]\nname = "ident"\nkeys = "{pem}"\n'
             f'iss = "{VAULT_ISS}"\naud = "{VAULT_AUD}"\n')
    config = write_config(tmp_path, [softhsm_settings("stress", name="softhsm")], tls=tls, hem=hem, extra=vault)
    return await tls_client(aiohttp_client, create_app(config, stress_tokens), tls)


async def status_of(client: Any, method: str, path: str, token: str, body: Any = None) -> int:
    response = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
    await response.read()
    return int(response.status)


async def test_hostile_hem_tokens(client: Any) -> None:
    now = int(time.time())
    native = await login(client, "correct horse battery staple", "keymgmt:list")
    auth = service_of(client).auth
    claims = {"sub": "svc-client", "scope": "keymgmt:list", "iss": IDP_ISS, "aud": IDP_AUD, "iat": now,
              "exp": now + 600, "jti": str(uuid.uuid4())}
    external = rs256(claims)
    assert await status_of(client, "GET", "/api/keymgmt/list", native) == 200
    assert await status_of(client, "GET", "/api/keymgmt/list", external) == 200
    forged = hostile(external, claims, IDP_ISS, IDP_AUD)
    user = {"scope": "keymgmt:list", "sub": "U", "usr": "alice", "jti": "j"}
    forged.update({
        "native: tampered payload": tamper(native, scope="keymgmt:gen keymgmt:del"),
        "native: expired (signed by the gateway)": await auth.issue({**user, "iat": now - 7200, "exp": now - 3600}),
        "native: nbf in the future (signed by the gateway)": await auth.issue({**user, "iat": now, "exp": now + 600,
                                                                             "nbf": now + 3600}),
        "native: missing exp (signed by the gateway)": await auth.issue({**user, "iat": now}),
        "native: missing sub (signed by the gateway)": await auth.issue({"scope": "keymgmt:list", "usr": "alice",
                                                                        "exp": now + 600}),
        "native: an unknown user (signed by the gateway)": await auth.issue({**user, "usr": "mallory",
                                                                            "exp": now + 600}),
        "native: alg none": forge({"alg": "none", "typ": "JWT"}, {**user, "exp": now + 600}),
        "native: HS256 keyed with the RSA public key": forge({"alg": "HS256", "typ": "JWT"}, {**user, "exp": now + 600},
                                                             hmac_key=RSA_PEM),
        "native: huge (8,150 characters)": native + "A" * (8150 - len(native)),
    })
    got = {name: await status_of(client, "GET", "/api/keymgmt/list", token) for name, token in forged.items()}
    COUNTS.update(f"hem {s}" for s in got.values())
    assert {n: s for n, s in got.items() if s != 401} == {}

    # Valid tokens beyond their rights: 403.
    session = Session(client)
    kid = await session.create("AES256")
    master = await login(client, "master of the house", "keymgmt:gen")
    over = {
        "scope keymgmt:list creating a key": await status_of(client, "POST", "/api/keymgmt/create", native,
                                                              {"label": "x", "type": "AES256"}),
        "role M on key management": await status_of(client, "POST", "/api/keymgmt/create", master,
                                                     {"label": "x", "type": "AES256"}),
        "use scope of another kid": await status_of(
            client, "POST", "/api/crypto/cipher/encrypt",
            await login(client, "correct horse battery staple", f"keymgmt:use:{'0' * 32}"),
            {"kid": kid, "alg": "AES256-GCM", "msg": "aGk="}),
        "external token's scope": await status_of(client, "DELETE", f"/api/keymgmt/delete/{kid}", external),
    }
    COUNTS.update(f"hem {s}" for s in over.values())
    assert {n: s for n, s in over.items() if s != 403} == {}
    report_line("HEM bearer (native HS256 and external RS256)", got, over)


async def test_hostile_vault_tokens(client: Any) -> None:
    now = int(time.time())
    owner = f"application:{uuid.uuid4()}"
    claims = {"sub": owner, "iss": VAULT_ISS, "aud": VAULT_AUD, "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())}
    valid = rs256(claims)
    assert await status_of(client, "GET", "/api/v1/vaults", valid) == 200
    forged = hostile(valid, claims, VAULT_ISS, VAULT_AUD)
    forged["no owner (sub missing)"] = rs256({k: v for k, v in claims.items() if k != "sub"})
    forged["nil owner"] = rs256({**claims, "sub": "application:00000000-0000-0000-0000-000000000000"})
    got = {name: await status_of(client, "GET", "/api/v1/vaults", token) for name, token in forged.items()}
    got.update({f"{name} (POST)": await status_of(client, "POST", "/api/v1/vaults", token, {"name": "x"})
                for name, token in list(forged.items())[:4]})
    COUNTS.update(f"vault {s}" for s in got.values())
    assert {n: s for n, s in got.items() if s != 401} == {}

    # The Vault dialect has no scopes or roles; what a valid caller may not do is a policy: secret import.
    vault_resp = await client.post("/api/v1/vaults", json={"name": "v", "description": "d"},
                                   headers={"Authorization": f"Bearer {valid}"})
    vault = await vault_resp.json()
    over = {"secret import while vault.allow_secret_import is off": await status_of(
        client, "POST", f"/api/v1/vaults/{vault['id']}/keys", valid,
        {"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "k", "secret": "00" * 32})}
    COUNTS.update(f"vault {s}" for s in over.values())
    assert over == {"secret import while vault.allow_secret_import is off": 403}
    report_line("Vault JWT (RS256 issuer with iss and aud)", got, over)


def report_line(what: str, forged: dict[str, int], over: dict[str, int]) -> None:
    section = report.section(f"hostile tokens, {what}")
    section.add(f"{len(forged)} forged or broken tokens: {dict(Counter(forged.values()))} "
                f"({', '.join(sorted(forged))})")
    section.add(f"{len(over)} valid tokens beyond their rights: {dict(Counter(over.values()))} ({', '.join(over)})")
