"""Bearer JWT verification (gateway.core.issuers): algorithms, keys by kid, claims, typed refusals."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import IssuerConfig
from gateway.core.issuers import (
    IssuerSet,
    JwtAlg,
    RejectReason,
    TokenRejected,
    bearer_token,
    ensure_dev_issuer_key,
    issue_token,
    public_jwk,
    public_key_path,
    thumbprint,
)
from gateway.errors import ConfigError, Unauthorized

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def now() -> int:
    return int(time.time())


def claims(**extra: Any) -> dict[str, Any]:
    t = now()
    return {"sub": "application:6f1b2c9e-3a44-4c1e-9d59-4f4c2a1b7e10", "iat": t, "exp": t + 600, **extra}


@pytest.fixture
def pem_issuers(tmp_path: Path) -> IssuerSet:
    """Two issuers from PEM files: "rsa" (with iss and aud) and "ec"."""
    rsa_pem = write(tmp_path / "rsa.pem", pem_public(RSA_KEY))
    ec_pem = write(tmp_path / "ec.pem", pem_public(EC_KEY))
    return IssuerSet.load([
        IssuerConfig(key="vault.issuers[0]", name="rsa", keys=rsa_pem, iss="https://ident.example", aud="vault"),
        IssuerConfig(key="vault.issuers[1]", name="ec", keys=ec_pem),
    ])


def sign(key: Any, payload: dict[str, Any], alg: str, kid: str | None = None, **headers: Any) -> str:
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


# --------------------------------------------------------------------------- accepted


def test_rs256_and_es256_from_pem_chosen_by_kid(pem_issuers: IssuerSet) -> None:
    rsa_token = sign(RSA_KEY, claims(iss="https://ident.example", aud="vault"), "RS256", thumbprint(RSA_KEY.public_key()))
    ok = pem_issuers.verify(rsa_token)
    assert (ok.issuer, ok.alg) == ("rsa", JwtAlg.RS256)
    assert ok.claims["sub"].startswith("application:")

    ec_token = sign(EC_KEY, claims(), "ES256", thumbprint(EC_KEY.public_key()))
    ok = pem_issuers.verify(ec_token)
    assert (ok.issuer, ok.alg, ok.kid) == ("ec", JwtAlg.ES256, thumbprint(EC_KEY.public_key()))


def test_jwks_keys_by_their_kid(tmp_path: Path) -> None:
    jwks = {"keys": [
        {**public_jwk(RSA_KEY.public_key()), "kid": "rsa-1", "use": "sig", "alg": "RS256"},
        {**public_jwk(EC_KEY.public_key()), "kid": "ec-1"},
        {"kty": "oct", "kid": "skipped-no-k"},  # other key types are skipped
        {**public_jwk(OTHER_EC_KEY.public_key()), "kid": "enc-1", "use": "enc"},  # not for signatures
    ]}
    path = write(tmp_path / "jwks.json", json.dumps(jwks))
    issuers = IssuerSet.load([IssuerConfig(key="vault.issuers[0]", name="idp", jwks=path)])
    assert issuers.verify(sign(RSA_KEY, claims(), "RS256", "rsa-1")).kid == "rsa-1"
    assert issuers.verify(sign(EC_KEY, claims(), "ES256", "ec-1")).kid == "ec-1"
    with pytest.raises(TokenRejected) as info:
        issuers.verify(sign(OTHER_EC_KEY, claims(), "ES256", "enc-1"))
    assert info.value.reason is RejectReason.UNKNOWN_KEY


def test_token_without_kid_only_when_one_key(tmp_path: Path, pem_issuers: IssuerSet) -> None:
    single = IssuerSet.load([IssuerConfig(key="i", name="ec", keys=write(tmp_path / "one.pem", pem_public(EC_KEY)))])
    assert single.verify(sign(EC_KEY, claims(), "ES256")).issuer == "ec"
    with pytest.raises(TokenRejected) as info:
        pem_issuers.verify(sign(EC_KEY, claims(), "ES256"))
    assert info.value.reason is RejectReason.UNKNOWN_KEY


def test_leeway_allows_small_clock_skew(pem_issuers: IssuerSet) -> None:
    t = now()
    token = sign(EC_KEY, {"iat": t + 10, "nbf": t + 10, "exp": t - 10}, "ES256", thumbprint(EC_KEY.public_key()))
    assert pem_issuers.verify(token).issuer == "ec"


# --------------------------------------------------------------------------- refused


def rejected(issuers: IssuerSet, token: str, **kwargs: Any) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        issuers.verify(token, **kwargs)
    assert isinstance(info.value, Unauthorized)
    assert info.value.message.startswith("unauthorized: ")
    return info.value


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(pem_issuers: IssuerSet) -> None:
    token = f"{_b64({'alg': 'none', 'kid': thumbprint(EC_KEY.public_key())})}.{_b64(claims())}."
    error = rejected(pem_issuers, token)
    assert error.reason is RejectReason.ALGORITHM and "'none'" in error.message


def test_hs256_with_the_public_key_as_secret_is_refused(pem_issuers: IssuerSet) -> None:
    # The classic confusion attack: HMAC keyed with the issuer's public PEM.
    kid = thumbprint(RSA_KEY.public_key())
    head = _b64({"alg": "HS256", "kid": kid, "typ": "JWT"})
    body = _b64(claims(iss="https://ident.example", aud="vault"))
    mac = hmac.HMAC(pem_public(RSA_KEY), hashes.SHA256())
    mac.update(f"{head}.{body}".encode())
    sig = base64.urlsafe_b64encode(mac.finalize()).rstrip(b"=").decode()
    error = rejected(pem_issuers, f"{head}.{body}.{sig}")
    assert error.reason is RejectReason.ALGORITHM


def test_key_of_another_algorithm_is_refused(pem_issuers: IssuerSet) -> None:
    # An ES256 header naming the RSA key's kid must not reach the RSA key.
    error = rejected(pem_issuers, sign(EC_KEY, claims(), "ES256", thumbprint(RSA_KEY.public_key())))
    assert error.reason is RejectReason.ALGORITHM


def test_other_algorithms_are_refused(pem_issuers: IssuerSet) -> None:
    for alg, key in (("ES384", ec.generate_private_key(ec.SECP384R1())), ("PS256", RSA_KEY), ("RS512", RSA_KEY)):
        assert rejected(pem_issuers, sign(key, claims(), alg, "x")).reason is RejectReason.ALGORITHM


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"exp": -3600}, RejectReason.EXPIRED),
        ({"nbf": 3600}, RejectReason.NOT_YET_VALID),
        ({"iat": 3600}, RejectReason.NOT_YET_VALID),
        ({"exp": "9999999999"}, RejectReason.MALFORMED),  # a string is not a NumericDate
        ({"exp": True}, RejectReason.MALFORMED),
    ],
)
def test_time_claims(pem_issuers: IssuerSet, payload: dict[str, Any], reason: RejectReason) -> None:
    body = claims()
    for name, value in payload.items():
        body[name] = now() + value if isinstance(value, int) and not isinstance(value, bool) else value
    assert rejected(pem_issuers, sign(EC_KEY, body, "ES256", thumbprint(EC_KEY.public_key()))).reason is reason


def test_required_claims(pem_issuers: IssuerSet) -> None:
    kid = thumbprint(EC_KEY.public_key())
    no_exp = {k: v for k, v in claims().items() if k != "exp"}
    assert rejected(pem_issuers, sign(EC_KEY, no_exp, "ES256", kid)).reason is RejectReason.MISSING_CLAIM
    no_sub = {k: v for k, v in claims().items() if k != "sub"}
    error = rejected(pem_issuers, sign(EC_KEY, no_sub, "ES256", kid), required=("exp", "sub"))
    assert error.reason is RejectReason.MISSING_CLAIM and "'sub'" in error.message


def test_issuer_and_audience_when_configured(pem_issuers: IssuerSet) -> None:
    kid = thumbprint(RSA_KEY.public_key())
    assert rejected(pem_issuers, sign(RSA_KEY, claims(aud="vault"), "RS256", kid)).reason is RejectReason.MISSING_CLAIM
    assert rejected(pem_issuers, sign(RSA_KEY, claims(iss="https://evil", aud="vault"), "RS256", kid)).reason is RejectReason.ISSUER
    assert rejected(pem_issuers, sign(RSA_KEY, claims(iss="https://ident.example", aud="hem"), "RS256", kid)).reason is RejectReason.AUDIENCE
    ok = sign(RSA_KEY, claims(iss="https://ident.example", aud=["hem", "vault"]), "RS256", kid)
    assert pem_issuers.verify(ok).issuer == "rsa"


def test_forged_signature_and_garbage(pem_issuers: IssuerSet) -> None:
    # Signed by a key nobody configured, but claiming a configured kid.
    forged = sign(OTHER_EC_KEY, claims(), "ES256", thumbprint(EC_KEY.public_key()))
    assert rejected(pem_issuers, forged).reason is RejectReason.SIGNATURE
    good = sign(EC_KEY, claims(), "ES256", thumbprint(EC_KEY.public_key()))
    head, body, sig = good.split(".")
    tampered = f"{head}.{_b64({**claims(), 'sub': 'organization:x'})}.{sig}"
    assert rejected(pem_issuers, tampered).reason is RejectReason.SIGNATURE
    for garbage in ("", "abc", "a.b.c", "x" * 20000):
        assert rejected(pem_issuers, garbage).reason is RejectReason.MALFORMED
    assert rejected(pem_issuers, sign(EC_KEY, claims(), "ES256", "unknown")).reason is RejectReason.UNKNOWN_KEY
    crit = sign(EC_KEY, claims(), "ES256", thumbprint(EC_KEY.public_key()), crit=["exp"])
    assert rejected(pem_issuers, crit).reason is RejectReason.MALFORMED


def test_no_issuers_configured() -> None:
    error = rejected(IssuerSet([]), sign(EC_KEY, claims(), "ES256"))
    assert error.reason is RejectReason.NO_ISSUERS


def test_bearer_header() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer abc") == "abc"  # the seed's curl writes it lower-case
    for bad in (None, "", "Basic abc", "Bearer", "Bearer   "):
        with pytest.raises(TokenRejected) as info:
            bearer_token(bad)
        assert info.value.reason is RejectReason.MISSING


# --------------------------------------------------------------------------- key files


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (lambda: EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), "private key"),
        (lambda: rsa.generate_private_key(65537, 1024).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "too short"),
        (lambda: pem_public(ec.generate_private_key(ec.SECP384R1())), "unsupported key type"),
        (lambda: b"not a pem", "no PEM public key"),
    ],
)
def test_bad_pem_files(tmp_path: Path, content: Callable[[], bytes], fragment: str) -> None:
    path = write(tmp_path / "k.pem", content())
    with pytest.raises(ConfigError) as info:
        IssuerSet.load([IssuerConfig(key="vault.issuers[0]", name="x", keys=path)])
    assert info.value.message.startswith("vault.issuers[0].keys: ")
    assert fragment in info.value.message


def test_bad_jwks_files(tmp_path: Path) -> None:
    private = {**public_jwk(EC_KEY.public_key()), "d": "AAAA"}
    for document, fragment in (({"keys": [private]}, "private"), ({"nope": 1}, "not a JWKS"),
                               ({"keys": []}, "no RS256 or ES256")):
        path = write(tmp_path / "jwks.json", json.dumps(document))
        with pytest.raises(ConfigError) as info:
            IssuerSet.load([IssuerConfig(key="vault.issuers[0]", name="x", jwks=path)])
        assert fragment in info.value.message
    with pytest.raises(ConfigError) as info:
        IssuerSet.load([IssuerConfig(key="vault.issuers[0]", name="x", keys=tmp_path / "absent.pem")])
    assert "does not exist" in info.value.message


def test_duplicate_kid_across_issuers(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", json.dumps({"keys": [{**public_jwk(EC_KEY.public_key()), "kid": "k"}]}))
    b = write(tmp_path / "b.json", json.dumps({"keys": [{**public_jwk(OTHER_EC_KEY.public_key()), "kid": "k"}]}))
    with pytest.raises(ConfigError, match="both have a key with kid 'k'"):
        IssuerSet.load([IssuerConfig(key="a", name="a", jwks=a), IssuerConfig(key="b", name="b", jwks=b)])


def test_certificate_in_pem(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(EC_KEY.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .sign(EC_KEY, hashes.SHA256()))
    path = write(tmp_path / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    issuers = IssuerSet.load([IssuerConfig(key="i", name="cert", keys=path)])
    assert issuers.verify(sign(EC_KEY, claims(), "ES256", thumbprint(EC_KEY.public_key()))).issuer == "cert"


def test_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 section 3.1: the RSA key and its thumbprint.
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
         "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZH"
         "zu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8"
         "awapJzKnqDKgw")
    key = rsa.RSAPublicNumbers(65537, int.from_bytes(base64.urlsafe_b64decode(n + "=="), "big")).public_key()
    assert thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --------------------------------------------------------------------------- dev issuer


def test_dev_issuer_key_created_once_and_tokens_verify(tmp_path: Path) -> None:
    private = tmp_path / "vault" / "dev-issuer.key"
    assert ensure_dev_issuer_key(private) is True
    assert private.stat().st_mode & 0o777 == 0o600
    first = private.read_bytes()
    assert ensure_dev_issuer_key(private) is False
    assert private.read_bytes() == first
    public = public_key_path(private)
    assert public == tmp_path / "vault" / "dev-issuer.pub"

    config = IssuerConfig(key="vault.issuers[0]", name="dev", keys=public, iss="gateway-dev", aud="vault")
    token = issue_token(private, {"sub": "user:1b4e28ba-2fa1-11d2-883f-0016d3cca427", "scope": "x"},
                        lifetime=120, issuers=[config])
    verified = IssuerSet.load([config]).verify(token, required=("exp", "iat", "sub"))
    assert verified.issuer == "dev"
    assert verified.claims["iss"] == "gateway-dev" and verified.claims["aud"] == "vault"
    assert verified.claims["exp"] - verified.claims["iat"] == 120
    assert verified.claims["scope"] == "x"
