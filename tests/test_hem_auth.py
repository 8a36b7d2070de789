"""The HEM login handshake and bearer tokens (client side written from the notes)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.core.issuers import thumbprint
from gateway.http.app import create_app
from gateway.token import TokenSet
from gateway.token.settings import TokenSettings
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    EID,
    MASTER_PASSPHRASE,
    OTHER_PASSPHRASE,
    PASSPHRASE,
    Session,
    b64url,
    b64url_json,
    bearer,
    client,
    ejwt,
    hem_settings,
    hem_tokens,
    login,
    ok,
    service_of,
    tls,
    tls_client,
    write_config,
)


async def challenge(client: Any) -> dict[str, Any]:
    return await ok(await client.get("/api/auth/token"))


async def post_auth(client: Any, auth: Any, status: int) -> Any:
    return await ok(await client.post("/api/auth/token", json={"auth": auth}), status)


async def test_challenge_shape(client: Any) -> None:
    now = int(time.time())
    first, second = await challenge(client), await challenge(client)
    assert first["eid"] == EID and first["lbl"] == "pkcs11-gateway"
    assert len(base64.b64decode(first["spk"])) == 32 and len(base64.b64decode(first["jti"])) == 36
    assert now < first["exp"] <= now + 61
    assert first["spk"] == second["spk"] and first["jti"] != second["jti"]  # one long-lived challenge key


async def test_login_issues_a_bearer_token(client: Any) -> None:
    token = await login(client, PASSPHRASE, "keymgmt:list")
    header, claims = b64url_json(token.split(".")[0]), b64url_json(token.split(".")[1])
    assert header["alg"] == "HS256"
    assert (claims["sub"], claims["scope"], claims["usr"]) == ("U", "keymgmt:list", "alice")
    assert claims["exp"] - claims["iat"] == 8 * 3600  # the default when the client asks for exp 0
    assert len(base64.b64decode(claims["jti"])) == 32
    assert (await client.get("/api/keymgmt/list", headers=bearer(token))).status == 200
    master = b64url_json((await login(client, MASTER_PASSPHRASE, "logger:get")).split(".")[1])
    assert master["sub"] == "M"


async def test_requested_expiry_and_ctx(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings,
                                        tls: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, [hem_settings], hem="bearer_max_lifetime = 3600")
    client = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    wanted = int(time.time()) + 600
    c = await challenge(client)
    token = (await post_auth(client, ejwt(c, PASSPHRASE, "keymgmt:list", exp=wanted, ctx="trace-1"), 200))["token"]
    claims = b64url_json(token.split(".")[1])
    assert claims["exp"] == wanted and claims["ctx"] == "trace-1"
    capped = b64url_json((await login(client, PASSPHRASE, "keymgmt:list", exp=int(time.time()) + 86400)).split(".")[1])
    assert capped["exp"] - capped["iat"] == 3600
    default = b64url_json((await login(client, PASSPHRASE, "keymgmt:list")).split(".")[1])
    assert default["exp"] - default["iat"] == 3600  # 8 h capped by bearer_max_lifetime
    c = await challenge(client)
    answer = await post_auth(client, ejwt(c, PASSPHRASE, "x", exp=int(time.time()) - 10), 401)
    assert "past" in answer["message"]


async def test_bad_logins_are_refused_and_counted(client: Any) -> None:
    auth = service_of(client).auth
    before = auth.failed_logins
    cases: list[tuple[Any, int, str]] = []
    c = await challenge(client)
    cases.append((ejwt(c, OTHER_PASSPHRASE, "keymgmt:gen"), 401, "not a configured user"))
    c = await challenge(client)
    good = ejwt(c, PASSPHRASE, "keymgmt:gen")
    cases.append((good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"), 401, "signature"))
    c = await challenge(client)
    cases.append((ejwt(c, PASSPHRASE, "keymgmt:gen", aud=base64.b64encode(os.urandom(32)).decode()), 401, "aud"))
    c = await challenge(client)
    cases.append((ejwt({**c, "jti": base64.b64encode(os.urandom(36)).decode()}, PASSPHRASE, "x"), 401, "jti"))
    c = await challenge(client)
    cases.append((ejwt(c, PASSPHRASE, "x", header=b'{"alg":"HS256","typ":"JWT"}'), 401, "header"))
    c = await challenge(client)
    cases.append((ejwt(c, PASSPHRASE, "x", header=b'{"ecdh":"x25519","alg":"none","typ":"JWT"}'), 401, "header"))
    c = await challenge(client)
    cases.append((ejwt(c, PASSPHRASE, "k" * 128), 400, "scope"))
    c = await challenge(client)
    cases.append((ejwt(c, PASSPHRASE, "two scopes"), 400, "scope"))
    cases.append(("not-a-jws", 400, "compact JWS"))
    cases.append((None, 400, "auth"))
    for auth_value, status, needle in cases:
        answer = await post_auth(client, auth_value, status)
        assert needle in answer["message"], (needle, answer)
    assert (await client.post("/api/auth/token", data=b"{oops")).status == 400
    assert auth.failed_logins - before == len(cases) + 1


async def test_a_challenge_is_used_once(client: Any) -> None:
    c = await challenge(client)
    proof = ejwt(c, PASSPHRASE, "keymgmt:list")
    await post_auth(client, proof, 200)
    answer = await post_auth(client, proof, 401)
    assert "used already" in answer["message"]


async def test_failed_logins_are_slowed_down(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings,
                                             tls: Any, tmp_path: Path) -> None:
    """A lower bound only (answered no sooner than the delay): it cannot flake on a slow machine."""
    config = write_config(tmp_path, [hem_settings], hem="failed_login_delay_ms = 200")
    client = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    c = await challenge(client)
    started = time.monotonic()
    await post_auth(client, ejwt(c, OTHER_PASSPHRASE, "x"), 401)
    assert time.monotonic() - started >= 0.2


async def test_two_apps_on_one_token_share_challenges_and_tokens(aiohttp_client: Any, hem_tokens: TokenSet,
                                                                   hem_settings: TokenSettings, tls: Any, tmp_path: Path) -> None:
    """As two processes would: the challenge of one is answered to the other, a token of one works on the other,
    and the shared state directory refuses a replay on the second."""
    config = write_config(tmp_path, [hem_settings])
    one = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    two = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    c = await challenge(one)
    proof = ejwt(c, PASSPHRASE, "keymgmt:list")
    token = (await post_auth(two, proof, 200))["token"]
    assert (await one.get("/api/keymgmt/list", headers=bearer(token))).status == 200
    await post_auth(one, proof, 401)


async def test_bearer_tokens_of_other_deployments_or_removed_users_are_refused(
        aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings, tls: Any, tmp_path: Path, client: Any) -> None:
    token = await login(client, PASSPHRASE, "keymgmt:list")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    text = write_config(other_dir, [hem_settings]).path.read_text().replace(EID, base64.b64encode(os.urandom(32)).decode())
    (other_dir / "gateway.toml").write_text(text)
    from gateway.config import load_config

    other = await tls_client(aiohttp_client, create_app(load_config(other_dir / "gateway.toml"), hem_tokens), tls)
    answer = await ok(await other.get("/api/keymgmt/list", headers=bearer(token)), 401)
    assert "signature" in answer["message"]
    no_alice_dir = tmp_path / "no-alice"
    no_alice_dir.mkdir()
    no_alice = write_config(no_alice_dir, [hem_settings], users=False)
    third = await tls_client(aiohttp_client, create_app(no_alice, hem_tokens), tls)
    answer = await ok(await third.get("/api/keymgmt/list", headers=bearer(token)), 401)
    assert "no longer configured" in answer["message"]


async def test_malformed_bearer_tokens(client: Any) -> None:
    foreign = issuer_token(ec.generate_private_key(ec.SECP256R1()), sub="svc", scope="keymgmt:list")
    for header in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}, bearer("a.b"), bearer("x.y.z"),
                   bearer(b64url(b'{"alg":"HS256"}') + ".e30." + b64url(os.urandom(32))), bearer(foreign)):
        assert (await client.get("/api/keymgmt/list", headers=header)).status == 401


# --------------------------------------------------------------------------- external issuers


def issuer_token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 600, **claims}, key, algorithm="ES256",
                      headers={"kid": thumbprint(key.public_key())})


async def test_external_issuer_tokens(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings,
                                      tls: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    extra = f'[[hem.external_issuers]]\nname = "idp"\nkeys = "{pem}"\niss = "https://idp.example"\n'
    config = write_config(tmp_path, [hem_settings], extra=extra)
    client = await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)
    ext_auth = base64.b64encode(os.urandom(16)).decode()  # an ExtAuth-style subject: a base64 kid
    token = issuer_token(key, sub=ext_auth, scope="keymgmt:gen", iss="https://idp.example")
    assert (await client.post("/api/keymgmt/create", headers=bearer(token), json={"label": "e", "type": "AES128"})).status == 200
    service = issuer_token(key, sub="svc:billing", scope=["keymgmt:list", "logger:get"], iss="https://idp.example")
    assert (await client.get("/api/keymgmt/list", headers=bearer(service))).status == 200
    master = issuer_token(key, sub="M", scope="keymgmt:gen", iss="https://idp.example")
    assert (await client.post("/api/keymgmt/create", headers=bearer(master), json={"label": "e", "type": "AES128"})).status == 403
    wrong_iss = issuer_token(key, sub="svc", scope="keymgmt:list", iss="https://evil.example")
    assert (await client.get("/api/keymgmt/list", headers=bearer(wrong_iss))).status == 401
    stranger = issuer_token(ec.generate_private_key(ec.SECP256R1()), sub="svc", scope="keymgmt:list", iss="https://idp.example")
    assert (await client.get("/api/keymgmt/list", headers=bearer(stranger))).status == 401
    expired = jwt.encode({"iat": 1, "exp": 2, "sub": "svc", "scope": "keymgmt:list", "iss": "https://idp.example"}, key,
                         algorithm="ES256", headers={"kid": thumbprint(key.public_key())})
    assert (await client.get("/api/keymgmt/list", headers=bearer(expired))).status == 401
