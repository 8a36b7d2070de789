"""What a client does before the load starts: HTTPS calls, the HEM login handshake, Vault JWTs.

The HEM handshake is written from docs/hem.md (not from gateway code):
``k = PBKDF2-HMAC-SHA256(passphrase, salt = eid string, 600000, 32)`` is an
X25519 private key; the eJWT is HS256 over ``{jti, aud = spk, exp, iat, iss,
scope}`` keyed with X25519(k, spk).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import http.client
import json
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=None)
def login_key(passphrase: str, eid: str) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=eid.encode("utf-8"), iterations=600_000)
    return kdf.derive(passphrase.encode("utf-8"))


def login_public(passphrase: str, eid: str) -> bytes:
    private = X25519PrivateKey.from_private_bytes(login_key(passphrase, eid))
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ejwt(challenge: dict[str, Any], passphrase: str, scope: str) -> str:
    private = X25519PrivateKey.from_private_bytes(login_key(passphrase, challenge["eid"]))
    iss = base64.b64encode(private.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)).decode()
    shared = private.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(challenge["spk"])))
    claims = {"jti": challenge["jti"], "aud": challenge["spk"], "exp": 0, "iat": int(time.time()), "iss": iss,
              "scope": scope}
    header = b'{"ecdh":"x25519","alg":"HS256","typ":"JWT"}'
    signing_input = _b64url(header) + "." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return signing_input + "." + _b64url(hmac.new(shared, signing_input.encode(), hashlib.sha256).digest())


class HttpError(RuntimeError):
    pass


class Client:
    """One HTTPS connection to the gateway (kept alive), JSON in and out."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        self._conn: http.client.HTTPSConnection | None = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=120)
        return self._conn

    def call(self, method: str, path: str, body: Any = None, *, bearer: str | None = None,
             expect: tuple[int, ...] = (200, 201)) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.close()  # a worker restarted or the connection idled out: one fresh try
                if attempt:
                    raise
        if response.status not in expect:
            raise HttpError(f"{method} {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- HEM ------------------------------------------------------------------

    def hem_login(self, passphrase: str, scope: str) -> str:
        challenge = self.call("GET", "/api/auth/token")
        answer = self.call("POST", "/api/auth/token", {"auth": ejwt(challenge, passphrase, scope)})
        return str(answer["token"])


def p256_peer() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A software P-256 key and its compressed public point in base64 (what a HEM client sends)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return key, base64.b64encode(public).decode()


def vault_jwt(issuer: ec.EllipticCurvePrivateKey, lifetime: int = 3 * 3600) -> str:
    """An ES256 bearer token for a fresh application owner, from the bench's issuer key."""
    from gateway.core.issuers import thumbprint  # the kid the gateway gives a PEM-configured key

    now = int(time.time())
    claims = {"sub": f"application:{uuid.uuid4()}", "iat": now, "exp": now + lifetime, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, issuer, algorithm="ES256", headers={"kid": thumbprint(issuer.public_key())})
