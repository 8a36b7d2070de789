"""HEM test helpers: a HEM client written from ../shared/notes/hem-api.md (NOT from
gateway code), real TLS, and configs naming the session's real tokens.

The client side of the handshake: PBKDF2-HMAC-SHA256(passphrase, salt = the
eid string, 600000 iterations, 32 bytes) is the X25519 private key; the eJWT
is HS256 over ``{"ecdh":"x25519","alg":"HS256","typ":"JWT"}`` and
``{jti, aud = spk, exp, iat, iss, scope}``, keyed by X25519(private, spk).
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.x509.oid import NameOID

from gateway.config import Config, load_config

if TYPE_CHECKING:
    from gateway.token.settings import TokenSettings

EID = base64.b64encode(hashlib.sha256(b"hem test deployment").digest()).decode()
PASSPHRASE = "correct horse battery staple"
MASTER_PASSPHRASE = "master of the house"
OTHER_PASSPHRASE = "somebody else entirely"


# --------------------------------------------------------------------------- the client side


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@functools.lru_cache(maxsize=None)
def login_key(passphrase: str, eid: str = EID) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=eid.encode("utf-8"), iterations=600_000)
    return kdf.derive(passphrase.encode("utf-8"))


def login_public(passphrase: str, eid: str = EID) -> bytes:
    private = X25519PrivateKey.from_private_bytes(login_key(passphrase, eid))
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ejwt(challenge: dict[str, Any], passphrase: str, scope: str | None, *, exp: int | None = None,
         header: bytes = b'{"ecdh":"x25519","alg":"HS256","typ":"JWT"}', **overrides: Any) -> str:
    private = X25519PrivateKey.from_private_bytes(login_key(passphrase, challenge["eid"]))
    iss = b64(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    shared = private.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(challenge["spk"])))
    claims: dict[str, Any] = {"jti": challenge["jti"], "aud": challenge["spk"],
                              "exp": challenge["exp"] if exp is None else exp, "iat": int(time.time()), "iss": iss}
    if scope is not None:
        claims["scope"] = scope
    claims.update(overrides)
    signing_input = b64url(header) + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    tag = hmac.new(shared, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(tag)


async def login(client: Any, passphrase: str, scope: str | None, *, exp: int = 0, **kwargs: Any) -> str:
    """The bearer token of a full handshake (GET challenge, POST eJWT)."""
    challenge = await (await client.get("/api/auth/token", **kwargs)).json()
    response = await client.post("/api/auth/token", json={"auth": ejwt(challenge, passphrase, scope, exp=exp)}, **kwargs)
    body = await response.json()
    assert response.status == 200, body
    return body["token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a child `gateway serve`)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hem test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


# --------------------------------------------------------------------------- configs


def token_toml(settings: TokenSettings) -> str:
    lines = ["[[tokens]]", f'name = "{settings.name}"', f'module = "{settings.module}"',
             f'label = "{settings.label}"', f'pin = "{settings.pin}"', f"sessions = {settings.sessions}"]
    if settings.init_args:
        lines.append(f'init_args = "{settings.init_args}"')
    if settings.environment:
        lines.append("[tokens.environment]")
        lines += [f'{k} = "{v}"' for k, v in settings.environment.items()]
    return "\n".join(lines) + "\n"


def users_toml() -> str:
    return "".join(
        f'[[hem.users]]\nname = "{name}"\npubkey = "{b64(login_public(p))}"\nrole = "{role}"\n'
        for name, p, role in (("alice", PASSPHRASE, "U"), ("root", MASTER_PASSPHRASE, "M"))
    )


def write_config(directory: Path, tokens: list[TokenSettings], *, tls: TlsFiles | None = None, listen: str | None = None,
                 hem: str = "", extra: str = "", users: bool = True) -> Config:
    """A config with a [hem] section for ``tokens`` (state under ``directory``)."""
    server = []
    if listen is not None:
        server.append(f'listen = "{listen}"')
    if tls is not None:
        server += [f'tls_cert = "{tls.cert}"', f'tls_key = "{tls.key}"']
    text = f'state_dir = "{directory / "state"}"\n'
    if server:
        text += "[server]\n" + "\n".join(server) + "\n"
    text += "".join(token_toml(t) for t in tokens)
    delay = "" if "failed_login_delay_ms" in hem else "failed_login_delay_ms = 0\n"
    text += f'[hem]\neid = "{EID}"\n{delay}{hem}\n'
    if users:
        text += users_toml()
    text += extra
    path = directory / "gateway.toml"
    path.write_text(text)
    return load_config(path)


async def tls_client(aiohttp_client: Any, app: Any, tls: TlsFiles) -> Any:
    """A test client talking real TLS to ``app`` (trusting the test CA)."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    server = TestServer(app)
    await server.start_server(ssl=tls.server_context())
    return await aiohttp_client(server, connector=aiohttp.TCPConnector(ssl=tls.client_context()))


# --------------------------------------------------------------------------- fixtures (import them into a test module)

import pytest  # noqa: E402

from gateway.http.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def hem_settings(softhsm_settings: Any) -> TokenSettings:
    return softhsm_settings("hem", name="softhsm")


@pytest.fixture(scope="module")
def hem_tokens(hem_settings: TokenSettings) -> Any:
    from gateway.token import TokenSet

    tokens = TokenSet.open([hem_settings])
    yield tokens
    tokens.close()


@pytest.fixture
async def client(aiohttp_client: Any, hem_tokens: Any, hem_settings: TokenSettings, tls: TlsFiles, tmp_path: Path) -> Any:
    """A TLS client of a HEM app on the SoftHSM2 "hem" token (users alice/U and root/M)."""
    config = write_config(tmp_path, [hem_settings])
    return await tls_client(aiohttp_client, create_app(config, hem_tokens), tls)


def service_of(client: Any) -> Any:
    """The app's HEM core (to mint tokens with chosen claims, read counters)."""
    from gateway.http.hem.state import HEM_KEY

    service = client.server.app[HEM_KEY].service
    assert service is not None
    return service


async def ok(response: Any, status: int = 200) -> Any:
    text = await response.text()
    assert response.status == status, text
    return json.loads(text) if text and response.content_type == "application/json" else text


class Session:
    """A logged-in HEM client: logs in once per scope, like the public clients do."""

    def __init__(self, client: Any, passphrase: str = PASSPHRASE) -> None:
        self.client = client
        self.passphrase = passphrase
        self.tokens: dict[str, str] = {}

    async def headers(self, scope: str) -> dict[str, str]:
        if scope not in self.tokens:
            self.tokens[scope] = await login(self.client, self.passphrase, scope)
        return bearer(self.tokens[scope])

    async def post(self, path: str, scope: str, body: dict[str, Any], status: int = 200) -> Any:
        return await ok(await self.client.post(path, json=body, headers=await self.headers(scope)), status)

    async def get(self, path: str, scope: str, status: int = 200) -> Any:
        return await ok(await self.client.get(path, headers=await self.headers(scope)), status)

    async def create(self, key_type: str, label: str = "k", **extra: Any) -> str:
        body = {"label": label, "type": key_type, **{k: v for k, v in extra.items() if v is not None}}
        return (await self.post("/api/keymgmt/create", "keymgmt:gen", body))["kid"]
