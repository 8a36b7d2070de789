"""Bearer JWTs from issuers the operator configures: loading their keys, verifying tokens.

Any dialect can use this (the Vault dialect does; the HEM helper can for
external issuers): build an :class:`IssuerSet` from ``IssuerConfig`` entries
once at start (reading the key files; problems are ``ConfigError``), then
call :meth:`IssuerSet.verify` per request.  Every refusal is a
:class:`TokenRejected` (an ``Unauthorized``, so 401 in every dialect) whose
``reason`` says what was wrong.

The checks are deliberately strict:

- only RS256 and ES256 (never ``none``, never HS*: a public key must never
  be usable as an HMAC secret), and the key picked by ``kid`` must be of the
  algorithm the header names;
- the key is chosen by ``kid`` among the configured keys only (``jku``,
  ``x5u`` and ``jwk`` headers are never followed); a token without ``kid``
  is accepted only when exactly one key is configured;
- ``exp``, ``nbf`` and ``iat`` must be numbers and are checked with a small
  leeway; ``iss`` and ``aud`` are checked when the issuer configures them;
  the caller names further required claims.

Keys come from PEM files (public keys or certificates; their ``kid`` is the
RFC 7638 JWK thumbprint) or JWKS files (``kid`` as given, else the thumbprint).
The same module mints development tokens (``gateway jwt issue``) from a
private key created by ``gateway tokens init``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.types import Options

from gateway.errors import ConfigError, InvalidInput, Unauthorized

if TYPE_CHECKING:
    from gateway.config import IssuerConfig

log = logging.getLogger(__name__)

# Clock skew tolerated on exp/nbf/iat between the issuer and this host.
LEEWAY_SECONDS: Final = 30
MIN_RSA_BITS: Final = 2048
# Far beyond any real JWT; bounds the work done on garbage.
MAX_TOKEN_CHARS: Final = 16384
DEFAULT_LIFETIME_SECONDS: Final = 3600
MAX_LIFETIME_SECONDS: Final = 30 * 24 * 3600
PUBLIC_SUFFIX: Final = ".pub"
_PRIVATE_FILE_MODE: Final = 0o600
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s.*?-----END \1-----", re.DOTALL)
_TIME_CLAIMS: Final = ("exp", "nbf", "iat")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class JwtAlg(enum.Enum):
    """The only JWS algorithms accepted."""

    RS256 = "RS256"
    ES256 = "ES256"


class RejectReason(enum.Enum):
    """Why a bearer token was refused (for logs, metrics and tests)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    ALGORITHM = "algorithm"
    UNKNOWN_KEY = "unknown_key"
    SIGNATURE = "signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ISSUER = "issuer"
    AUDIENCE = "audience"
    MISSING_CLAIM = "missing_claim"
    NO_ISSUERS = "no_issuers"


class TokenRejected(Unauthorized):
    """A bearer token that does not pass verification (401 in every dialect)."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"unauthorized: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class VerificationKey:
    """One public key of one issuer, with the algorithm it verifies."""

    kid: str
    alg: JwtAlg
    key: PublicKey
    issuer: str


@dataclass(frozen=True)
class Issuer:
    """A configured issuer and its keys."""

    name: str
    iss: str | None
    aud: str | None
    keys: tuple[VerificationKey, ...]


@dataclass(frozen=True)
class VerifiedToken:
    """The claims of a token that passed every check, and who vouched for it."""

    issuer: str
    kid: str
    alg: JwtAlg
    claims: Mapping[str, Any]


# --------------------------------------------------------------------------- keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The required members of the public JWK of ``key`` (RFC 7517/7518)."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"e": _b64url(_int_bytes(numbers.e)), "kty": "RSA", "n": _b64url(_int_bytes(numbers.n))}
    point = key.public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": _b64url(_int_bytes(point.x, 32)), "y": _b64url(_int_bytes(point.y, 32))}


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the ``kid`` of PEM-configured keys."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def key_alg(key: PublicKey | PrivateKey, where: str) -> JwtAlg:
    """RS256 for RSA >= 2048 bits, ES256 for P-256; anything else is a ConfigError."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{where}: a {key.key_size}-bit RSA key is too short; expected at least {MIN_RSA_BITS} bits")
        return JwtAlg.RS256
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(key.curve, ec.SECP256R1):
        return JwtAlg.ES256
    raise ConfigError(f"{where}: unsupported key type; expected an RSA (RS256) or P-256 (ES256) key")


def load_pem_keys(path: Path, where: str) -> list[PublicKey]:
    """Public keys and certificates' keys from a PEM file; private keys are refused."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist; expected a PEM file of public keys "
                          "(for the dev issuer, `gateway tokens init` creates it)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    keys: list[PublicKey] = []
    for match in _PEM_BLOCK.finditer(data):
        kind = match.group(1).decode("ascii")
        block = match.group(0)
        try:
            if "PRIVATE KEY" in kind:
                raise ConfigError(f"{where}: {path} holds a private key; an issuer needs only its public keys")
            if kind == "CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(block).public_key()
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = serialization.load_pem_public_key(block)
            else:
                raise ConfigError(f"{where}: {path} holds a PEM block {kind!r}; expected PUBLIC KEY or CERTIFICATE")
        except ValueError as exc:
            raise ConfigError(f"{where}: {path}: cannot parse a {kind} block ({exc})") from None
        key_alg(key, where)
        keys.append(key)
    if not keys:
        raise ConfigError(f"{where}: {path} holds no PEM public key or certificate")
    return keys


_PRIVATE_JWK_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def load_jwks(path: Path, where: str) -> list[tuple[str, PublicKey]]:
    """(kid, key) pairs from a JWKS file; keys for other uses or algorithms are skipped."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist; expected a JWKS file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {path} as JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{where}: {path} is not a JWKS; expected {{\"keys\": [...]}}")
    found: list[tuple[str, PublicKey]] = []
    for i, jwk in enumerate(document["keys"]):
        entry = f"{where}: {path} keys[{i}]"
        if not isinstance(jwk, dict):
            raise ConfigError(f"{entry}: expected a JSON object")
        if any(m in jwk for m in _PRIVATE_JWK_MEMBERS):
            raise ConfigError(f"{entry}: holds private or symmetric key material; an issuer needs only public keys")
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256" if jwk.get("kty") == "RSA" else "ES256") not in ("RS256", "ES256"):
            log.info("%s: skipped (use %r, alg %r)", entry, jwk.get("use"), jwk.get("alg"))
            continue
        try:
            if jwk.get("kty") == "RSA":
                key: Any = RSAAlgorithm.from_jwk(jwk)
            elif jwk.get("kty") == "EC":
                key = ECAlgorithm.from_jwk(jwk)
            else:
                log.info("%s: skipped (kty %r)", entry, jwk.get("kty"))
                continue
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ConfigError(f"{entry}: not a usable public JWK ({exc})") from None
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
            log.info("%s: skipped (curve %s)", entry, key.curve.name)
            continue
        alg = key_alg(key, entry)
        if "alg" in jwk and jwk["alg"] != alg.value:
            raise ConfigError(f"{entry}: alg {jwk['alg']!r} does not fit the key; expected {alg.value}")
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ConfigError(f"{entry}: kid must be a non-empty string")
        found.append((kid or thumbprint(key), key))
    if not found:
        raise ConfigError(f"{where}: {path} holds no RS256 or ES256 signing key")
    return found


def load_issuer(config: IssuerConfig) -> Issuer:
    """Read one issuer's key file; ConfigError names the config key at fault."""
    if config.jwks is not None:
        pairs = load_jwks(config.jwks, f"{config.key}.jwks")
    else:
        assert config.keys is not None  # the config parser requires one of the two
        pairs = [(thumbprint(k), k) for k in load_pem_keys(config.keys, f"{config.key}.keys")]
    keys = tuple(VerificationKey(kid, key_alg(key, config.key), key, config.name) for kid, key in pairs)
    return Issuer(config.name, config.iss, config.aud, keys)


# --------------------------------------------------------------------------- verification


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <JWT>`` header (scheme case-insensitive)."""
    if not authorization:
        raise TokenRejected(RejectReason.MISSING, "missing bearer token (Authorization: Bearer <JWT>)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected(RejectReason.MISSING, "the Authorization header is not 'Bearer <JWT>'")
    return token.strip()


class IssuerSet:
    """The configured issuers; verifies tokens against their keys."""

    def __init__(self, issuers: Sequence[Issuer]) -> None:
        self.issuers = {i.name: i for i in issuers}
        self._keys: dict[str, VerificationKey] = {}
        for issuer in issuers:
            for key in issuer.keys:
                other = self._keys.get(key.kid)
                if other is not None and other.key != key.key:
                    raise ConfigError(f"issuers {other.issuer!r} and {issuer.name!r} both have a key with kid "
                                      f"{key.kid!r}; expected unique kids (they choose the key)")
                self._keys[key.kid] = key

    @classmethod
    def load(cls, configs: Iterable[IssuerConfig]) -> "IssuerSet":
        return cls([load_issuer(c) for c in configs])

    def __len__(self) -> int:
        return len(self.issuers)

    def _select(self, header: Mapping[str, Any]) -> VerificationKey:
        kid = header.get("kid")
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            raise TokenRejected(RejectReason.UNKNOWN_KEY, "the token header has no kid, and several issuer keys are configured")
        if not isinstance(kid, str):
            raise TokenRejected(RejectReason.MALFORMED, "the token header's kid is not a string")
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(RejectReason.UNKNOWN_KEY, f"no configured issuer has a key with kid {kid[:80]!r}")
        return key

    def verify(self, token: str, *, required: Iterable[str] = ("exp", "iat"), now: float | None = None) -> VerifiedToken:
        """Verify signature and claims; ``required`` claims must be present.

        ``now`` (seconds since the epoch) is for tests; default the clock.
        """
        if not self._keys:
            raise TokenRejected(RejectReason.NO_ISSUERS, "no token issuer is configured")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected(RejectReason.MALFORMED, "the bearer token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected(RejectReason.MALFORMED, "the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in {a.value for a in JwtAlg}:
            shown = alg if isinstance(alg, str) else type(alg).__name__
            raise TokenRejected(RejectReason.ALGORITHM, f"JWT algorithm {shown[:20]!r} is not accepted; expected RS256 or ES256")
        if "crit" in header:
            raise TokenRejected(RejectReason.MALFORMED, "the token header has critical extensions ('crit'), which are not supported")
        key = self._select(header)
        if key.alg.value != alg:
            raise TokenRejected(RejectReason.ALGORITHM, f"the token says {alg}, but key {key.kid!r} is a {key.alg.value} key")
        issuer = self.issuers[key.issuer]
        claims = self._decode(token, key, issuer, list(dict.fromkeys(required)))
        _check_times(claims, time.time() if now is None else now)
        return VerifiedToken(issuer.name, key.kid, key.alg, claims)

    @staticmethod
    def _decode(token: str, key: VerificationKey, issuer: Issuer, required: list[str]) -> dict[str, Any]:
        """Signature, presence of required claims, iss and aud (times: see _check_times)."""
        options: Options = {
            "require": required,
            "verify_signature": True,
            # Checked by _check_times, which also insists that they are numbers.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": issuer.iss is not None,
            # Without a configured audience the claim is not checked (documented).
            "verify_aud": issuer.aud is not None,
        }
        try:
            return jwt.decode(token, key.key, algorithms=[key.alg.value], audience=issuer.aud,
                              issuer=issuer.iss, options=options)
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(RejectReason.MISSING_CLAIM, f"the bearer token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(RejectReason.AUDIENCE, f"the bearer token is not meant for audience {issuer.aud!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(RejectReason.ISSUER, f"the bearer token's iss is not {issuer.iss!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected(RejectReason.SIGNATURE, "the bearer token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(RejectReason.MALFORMED, f"the bearer token is invalid ({exc})") from None


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    """exp, nbf and iat, when present: numbers, and valid at ``now`` give or take the leeway."""
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TokenRejected(RejectReason.MALFORMED, f"the token's {name} claim is not a number")
    if "exp" in claims and claims["exp"] <= now - LEEWAY_SECONDS:
        raise TokenRejected(RejectReason.EXPIRED, "the bearer token has expired")
    for name in ("nbf", "iat"):
        if name in claims and claims[name] > now + LEEWAY_SECONDS:
            raise TokenRejected(RejectReason.NOT_YET_VALID, f"the bearer token is not valid yet ({name} is in the future)")


# --------------------------------------------------------------------------- development issuer


def public_key_path(private_key: Path) -> Path:
    """Where ``gateway tokens init`` puts the public half of the dev issuer key."""
    return private_key.with_suffix(PUBLIC_SUFFIX)


def ensure_dev_issuer_key(path: Path) -> bool:
    """Create a P-256 dev issuer key at ``path`` (mode 0600) and its public half; True if created.

    An existing private key is kept; its public file is rewritten if missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = False
    if not path.exists():
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE_MODE)
        except FileExistsError:
            pass  # another process just wrote one: use it
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            created = True
    key = load_private_key(path, "vault.dev_issuer_key")
    public = public_key_path(path)
    pem_public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not public.exists() or public.read_bytes() != pem_public:
        tmp = public.with_name(public.name + ".tmp")
        tmp.write_bytes(pem_public)
        tmp.replace(public)
    return created


def load_private_key(path: Path, where: str) -> PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist; `gateway tokens init` creates it") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(f"{where}: {path}: expected an RSA or P-256 private key")
    key_alg(key, where)
    return key


def issue_token(
    private_key_path: Path,
    claims: Mapping[str, Any],
    *,
    lifetime: int = DEFAULT_LIFETIME_SECONDS,
    issuers: Iterable[IssuerConfig] = (),
    now: int | None = None,
) -> str:
    """A signed JWT for development: iat/nbf/exp/jti set, ``kid`` = the key's thumbprint.

    ``iss``/``aud`` default to those of the configured issuer that trusts this
    key, so the token passes that issuer's checks.  ``claims`` override all.
    """
    if not 1 <= lifetime <= MAX_LIFETIME_SECONDS:
        raise InvalidInput(f"the lifetime must be from 1 to {MAX_LIFETIME_SECONDS} seconds, got {lifetime}")
    key = load_private_key(private_key_path, "vault.dev_issuer_key")
    alg = key_alg(key, "vault.dev_issuer_key")
    kid = thumbprint(key.public_key())
    issued = int(time.time()) if now is None else now
    payload: dict[str, Any] = {"iat": issued, "nbf": issued, "exp": issued + lifetime, "jti": str(uuid.uuid4())}
    for config in issuers:
        try:
            issuer = load_issuer(config)
        except ConfigError:
            continue  # another issuer's files are no concern of the dev key
        if any(k.kid == kid for k in issuer.keys):
            if issuer.iss is not None:
                payload["iss"] = issuer.iss
            if issuer.aud is not None:
                payload["aud"] = issuer.aud
            break
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=alg.value, headers={"kid": kid, "typ": "JWT"})
