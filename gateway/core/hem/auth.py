"""The HEM login handshake and bearer tokens, server side.

1. ``GET /api/auth/token`` -> a challenge ``{eid, spk, jti, exp, lbl}``.
   ``spk`` is the public half of a long-lived X25519 key in the token, shared
   by every gateway process on it (``gateway.core.system_keys``).  ``jti`` is
   self-verifying: ``exp(4) || nonce(16) || mac(16)`` where ``mac`` is an
   HMAC in the token over the deployment, ``exp`` and ``nonce`` -- so any
   process accepts a challenge any other process issued, without shared state.
2. ``POST /api/auth/token {"auth": eJWT}``: the eJWT is HS256 keyed by
   X25519(challenge key, iss), computed in the token (``ecdh_secret``: the one
   handshake secret the gateway holds, for one comparison, never stored or
   logged).  ``iss`` must be a configured user's public key, ``aud`` the
   ``spk``, ``jti`` a valid unexpired challenge used once.
3. The answer is a bearer HS256 JWT ``{scope, sub, iat, exp, jti, ctx?, usr}``
   signed by an HMAC key in the token, so every process verifies every
   process's tokens.

Single use of ``jti`` is enforced per process in memory and across the
processes of one host by an ``O_EXCL`` file per nonce under
``<state_dir>/hem/jti`` (cheap, atomic, and it survives restarts).  Processes
on different hosts that share a token but not a file system each enforce it
for themselves: a replayed challenge is then accepted at most once per host
within its 60 seconds, and only with the user's valid signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac as hmac_lib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from gateway.core.hem.access import Principal
from gateway.core.hem.users import HemUser
from gateway.errors import InvalidInput, Unauthorized

if TYPE_CHECKING:
    from gateway.core.issuers import IssuerSet
    from gateway.token import Token

log = logging.getLogger(__name__)

CHALLENGE_SECONDS: Final = 60
DEFAULT_LIFETIME: Final = 8 * 3600
MAX_SCOPE_CHARS: Final = 127
MAX_CTX_CHARS: Final = 63
MAX_JWT_CHARS: Final = 8192
SESSION_KEY_ROLE: Final = "hem-session"
CHALLENGE_KEY_ROLE: Final = "hem-challenge"
# HEM pads failed logins to 1500 ms after 3 consecutive failures: the same factor here.
SLOW_AFTER_FAILURES: Final = 3
SLOW_FACTOR: Final = 3
_JTI_MAC_DOMAIN: Final = b"hem-challenge\x00"
_SCOPE_RE: Final = re.compile(r"[\x21-\x7e]{1,127}")
_BEARER_HEADER: Final = {"typ": "JWT", "alg": "HS256"}
_CACHE_LIMIT: Final = 4096


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64_any(text: object) -> bytes:
    """Standard or URL-safe base64, padding optional."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    norm = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(norm + "=" * (-len(norm) % 4), validate=True)


def _json_segment(segment: str) -> dict[str, Any]:
    value = json.loads(b64url_decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _int_claim(payload: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"the eJWT claim {name!r} must be an integer")
    return value


class ChallengeKey(Protocol):
    public: bytes

    async def shared(self, peer: bytes) -> bytes: ...


class TokenChallengeKey:
    """The challenge X25519 key pair in the token; X25519 runs in the token."""

    def __init__(self, token: Token, kid: bytes, public: bytes) -> None:
        self.token, self.kid, self.public = token, kid, public

    async def shared(self, peer: bytes) -> bytes:
        return await self.token.run(self.token.ecdh_secret, self.kid, peer=peer)


class SoftwareChallengeKey:
    """For tokens without X25519 ECDH: the private key is an HMAC (in the token)
    of the deployment, so every process computes the same one; it lives in
    gateway memory (documented in docs/hem.md)."""

    def __init__(self, private: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._key = X25519PrivateKey.from_private_bytes(private)
        self.public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    async def shared(self, peer: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            raise Unauthorized("the login key (iss) is not a usable X25519 public key") from None


class ReplayGuard:
    """Remembers used challenge nonces until they expire (see the module docstring)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._used: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                log.warning("HEM: cannot create %s (%s); challenge reuse is checked per process only", directory, exc)
                self.directory = None

    def claim(self, nonce: bytes, exp: int) -> bool:
        """True the first time a nonce is presented, False on every reuse (blocking: file I/O)."""
        now = time.time()
        with self._lock:
            if nonce in self._used:
                return False
            self._used[nonce] = exp
            if now - self._last_sweep > CHALLENGE_SECONDS:
                self._sweep(now)
        if self.directory is None:
            return True
        try:
            fd = os.open(self.directory / f"{exp}-{nonce.hex()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            log.warning("HEM: cannot record a used challenge in %s: %s", self.directory, exc)
            return True
        os.close(fd)
        return True

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for nonce, exp in list(self._used.items()):
            if exp < now - 5:
                del self._used[nonce]
        if self.directory is None:
            return
        try:
            for name in os.listdir(self.directory):
                stamp = name.split("-", 1)[0]
                if stamp.isdigit() and int(stamp) < now - 5:
                    try:
                        os.unlink(self.directory / name)
                    except FileNotFoundError:
                        pass
        except OSError:
            pass


@dataclass(frozen=True)
class Challenge:
    eid: str
    spk: str
    jti: str
    exp: int
    lbl: str

    def as_json(self) -> dict[str, Any]:
        return {"eid": self.eid, "spk": self.spk, "jti": self.jti, "exp": self.exp, "lbl": self.lbl}


class HemAuth:
    """Issues challenges and bearer tokens; authenticates requests."""

    def __init__(
        self,
        *,
        token: Token,
        eid: str,
        label: str,
        users: tuple[HemUser, ...],
        session_kid: bytes,
        challenge_key: ChallengeKey,
        replay: ReplayGuard,
        max_lifetime: int,
        failed_login_delay: float,
        issuers: IssuerSet | None = None,
    ) -> None:
        self.token = token
        self.eid = eid
        self.label = label
        self.users = users
        self.session_kid = session_kid
        self.challenge_key = challenge_key
        self.spk = base64.b64encode(challenge_key.public).decode("ascii")
        self.replay = replay
        self.max_lifetime = max_lifetime
        self.failed_login_delay = failed_login_delay
        self.issuers = issuers
        self.failed_logins = 0  # since start, this process
        self._consecutive_failures = 0
        self._verified: dict[str, tuple[Principal, int]] = {}
        self._scope_tag = self.eid.encode("utf-8")

    # -- tokens' HMAC ----------------------------------------------------------

    async def _mac(self, data: bytes) -> bytes:
        from gateway.token import HashAlg

        return await self.token.run(self.token.hmac, self.session_kid, HashAlg.SHA256, data)

    # -- challenge -------------------------------------------------------------

    def _jti_input(self, exp: int, nonce: bytes) -> bytes:
        return _JTI_MAC_DOMAIN + self._scope_tag + b"\x00" + exp.to_bytes(4, "big") + nonce

    async def challenge(self) -> Challenge:
        exp = int(time.time()) + CHALLENGE_SECONDS
        nonce = secrets.token_bytes(16)
        mac = (await self._mac(self._jti_input(exp, nonce)))[:16]
        jti = base64.b64encode(exp.to_bytes(4, "big") + nonce + mac).decode("ascii")
        return Challenge(self.eid, self.spk, jti, exp, self.label)

    async def _check_jti(self, jti: object) -> tuple[bytes, int]:
        try:
            raw = _b64_any(jti)
        except (ValueError, binascii.Error):
            raise Unauthorized("the eJWT's jti is not a challenge this gateway issued") from None
        if len(raw) != 36:
            raise Unauthorized("the eJWT's jti is not a challenge this gateway issued")
        exp, nonce, mac = int.from_bytes(raw[:4], "big"), raw[4:20], raw[20:]
        expected = (await self._mac(self._jti_input(exp, nonce)))[:16]
        if not hmac_lib.compare_digest(mac, expected):
            raise Unauthorized("the eJWT's jti is not a challenge this gateway issued")
        if exp < time.time():
            raise Unauthorized("the challenge has expired; get a new one from GET /api/auth/token")
        return nonce, exp

    # -- login -----------------------------------------------------------------

    async def login(self, auth: object) -> tuple[str, Principal]:
        """Check an eJWT and issue a bearer token.  Failures are answered no sooner
        than the configured delay (longer after repeated failures) and counted."""
        started = time.monotonic()
        try:
            result = await self._login(auth)
        except (Unauthorized, InvalidInput):
            self.failed_logins += 1
            self._consecutive_failures += 1
            delay = self.failed_login_delay
            if self._consecutive_failures >= SLOW_AFTER_FAILURES:
                delay *= SLOW_FACTOR
            remaining = delay - (time.monotonic() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
            raise
        self._consecutive_failures = 0
        return result

    def _user_for(self, iss: object) -> HemUser:
        try:
            key = _b64_any(iss)
        except (ValueError, binascii.Error):
            raise Unauthorized("the eJWT's iss is not a base64 public key") from None
        found = None
        for user in self.users:  # every key compared, in constant time
            if hmac_lib.compare_digest(user.public_key, key):
                found = user
        if found is None:
            raise Unauthorized("the login key (iss) is not a configured user's")
        return found

    async def _login(self, auth: object) -> tuple[str, Principal]:
        if not isinstance(auth, str) or not auth or len(auth) > MAX_JWT_CHARS:
            raise InvalidInput('the body must be {"auth": "<eJWT>"}')
        parts = auth.split(".")
        if len(parts) != 3:
            raise InvalidInput("auth is not a compact JWS (header.payload.signature)")
        try:
            header, payload = _json_segment(parts[0]), _json_segment(parts[1])
            signature = b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("auth is not a compact JWS of JSON objects in base64url") from None
        if header.get("alg") != "HS256" or header.get("ecdh") != "x25519":
            raise Unauthorized('the eJWT header must be {"ecdh":"x25519","alg":"HS256","typ":"JWT"}')
        for name in ("jti", "aud", "iss"):
            if not isinstance(payload.get(name), str):
                raise InvalidInput(f"the eJWT lacks the string claim {name!r}")
        exp = _int_claim(payload, "exp")
        _int_claim(payload, "iat", required=False)
        scope = payload.get("scope", "")
        if not isinstance(scope, str) or (scope and not _SCOPE_RE.fullmatch(scope)):
            raise InvalidInput(f"scope must be 1 to {MAX_SCOPE_CHARS} printable ASCII characters without spaces")
        ctx = payload.get("ctx")
        if ctx is not None and (not isinstance(ctx, (str, int)) or isinstance(ctx, bool) or len(str(ctx)) > MAX_CTX_CHARS):
            raise InvalidInput(f"ctx must be a string of at most {MAX_CTX_CHARS} characters")

        user = self._user_for(payload["iss"])
        try:
            aud = _b64_any(payload["aud"])
        except (ValueError, binascii.Error):
            aud = b""
        if not hmac_lib.compare_digest(aud, self.challenge_key.public):
            raise Unauthorized("the eJWT's aud is not this gateway's challenge key (spk)")
        nonce, challenge_exp = await self._check_jti(payload["jti"])
        secret = await self.challenge_key.shared(user.public_key)
        expected = hmac_lib.new(secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        del secret
        if not hmac_lib.compare_digest(signature, expected):
            raise Unauthorized("the eJWT's signature does not verify with that user's key")
        if not await asyncio.get_running_loop().run_in_executor(None, self.replay.claim, nonce, challenge_exp):
            raise Unauthorized("this challenge was used already; get a new one from GET /api/auth/token")
        now = int(time.time())
        assert exp is not None
        if exp == 0:
            exp = now + min(DEFAULT_LIFETIME, self.max_lifetime)
        elif exp <= now:
            raise Unauthorized("the requested token expiry (exp) is in the past")
        else:
            exp = min(exp, now + self.max_lifetime)
        claims: dict[str, Any] = {
            "scope": scope, "sub": user.role, "iat": now, "exp": exp,
            "jti": base64.b64encode(secrets.token_bytes(32)).decode("ascii"), "usr": user.name,
        }
        if ctx is not None:
            claims["ctx"] = ctx
        return await self.issue(claims), Principal(user.role, scope, user.name)

    async def issue(self, claims: dict[str, Any]) -> str:
        """Sign a bearer token with the session key in the token."""
        signing_input = b64url(json.dumps(_BEARER_HEADER, separators=(",", ":")).encode()) + "." + \
            b64url(json.dumps(claims, separators=(",", ":")).encode())
        return signing_input + "." + b64url(await self._mac(signing_input.encode("ascii")))

    async def issue_for(self, user: HemUser, scope: str, lifetime: int = DEFAULT_LIFETIME) -> str:
        """A bearer token for a configured user without the handshake (the dev banner)."""
        now = int(time.time())
        return await self.issue({"scope": scope, "sub": user.role, "iat": now, "exp": now + min(lifetime, self.max_lifetime),
                                 "jti": base64.b64encode(secrets.token_bytes(32)).decode("ascii"), "usr": user.name})

    # -- bearer tokens on requests ------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of ``Authorization: Bearer <JWT>``; Unauthorized (401) otherwise."""
        if not authorization:
            raise Unauthorized("missing bearer token (Authorization: Bearer <JWT_TOKEN>)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_JWT_CHARS:
            raise Unauthorized("the Authorization header is not 'Bearer <JWT_TOKEN>'")
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] <= now:
                raise Unauthorized("the bearer token has expired")
            return cached[0]
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("the bearer token is not a JWT")
        try:
            header = _json_segment(parts[0])
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("the bearer token is not a JWT") from None
        if header.get("alg") != "HS256":
            return self._external(token)
        try:
            payload = _json_segment(parts[1])
            signature = b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("the bearer token is not a JWT") from None
        expected = await self._mac(f"{parts[0]}.{parts[1]}".encode("ascii"))
        if not hmac_lib.compare_digest(signature, expected):
            raise Unauthorized("the bearer token's signature does not verify")
        exp, sub, scope, name = payload.get("exp"), payload.get("sub"), payload.get("scope", ""), payload.get("usr")
        if isinstance(exp, bool) or not isinstance(exp, int) or not isinstance(sub, str) or not isinstance(scope, str):
            raise Unauthorized("the bearer token lacks exp, sub or scope")
        if exp <= now:
            raise Unauthorized("the bearer token has expired")
        # The gateway never sets nbf; one in the future (or not a number) is not a token it would honour.
        nbf = payload.get("nbf")
        if "nbf" in payload and (isinstance(nbf, bool) or not isinstance(nbf, (int, float)) or nbf > now):
            raise Unauthorized("the bearer token is not valid yet (nbf)")
        user = next((u for u in self.users if u.name == name), None)
        if user is None or user.role != sub:
            raise Unauthorized("the bearer token's user is no longer configured")
        principal = Principal(sub, scope, user.name)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (principal, exp)
        return principal

    def _external(self, token: str) -> Principal:
        from gateway.core.issuers import TokenRejected

        if self.issuers is None or not len(self.issuers):
            raise Unauthorized("the bearer token is not HS256 and no external issuer is configured")
        try:
            verified = self.issuers.verify(token, required=("exp", "iat", "sub"))
        except TokenRejected as exc:
            raise Unauthorized(exc.message) from None
        claims = verified.claims
        sub, scope = claims.get("sub"), claims.get("scope", "")
        if isinstance(scope, list):
            scope = " ".join(s for s in scope if isinstance(s, str))
        if not isinstance(sub, str) or not sub or not isinstance(scope, str):
            raise Unauthorized("the external token's sub or scope is not a string")
        return Principal(sub, scope, f"{verified.issuer}:{sub}", external=True)
