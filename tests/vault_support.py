"""Helpers for the Vault dialect tests: configs naming the session's real tokens, JWT minting."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import Config, load_config
from gateway.core.issuers import thumbprint

if TYPE_CHECKING:
    from gateway.token.settings import TokenSettings

SEED_DERIVE_BODY = """{
      "nonce": 1,
      "context": "channel-6852386c-8a3d-41c6-aa0e-766a31a8faaf",
      "name": "private chat",
      "description": "this is a secure channel"
    }"""
SEED_FIELDS = {"id", "created_at", "vault_id", "type", "usage", "spec", "name", "description"}


def token_toml(settings: TokenSettings) -> str:
    """A [[tokens]] table for adapter settings (test PINs written literally)."""
    lines = ["[[tokens]]", f'name = "{settings.name}"', f'module = "{settings.module}"',
             f'label = "{settings.label}"', f'pin = "{settings.pin}"', f"sessions = {settings.sessions}"]
    if settings.init_args:
        lines.append(f'init_args = "{settings.init_args}"')
    if settings.environment:
        lines.append("[tokens.environment]")
        lines += [f'{k} = "{v}"' for k, v in settings.environment.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Issuer:
    """A test JWT issuer: its private key, written as a PEM public key for the config."""

    name: str
    key: Any

    @classmethod
    def new(cls, name: str, alg: str = "ES256") -> "Issuer":
        key = (ec.generate_private_key(ec.SECP256R1()) if alg == "ES256"
               else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(name, key)

    @property
    def alg(self) -> str:
        return "ES256" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "RS256"

    def write_public(self, directory: Path) -> Path:
        path = directory / f"{self.name}.pem"
        path.write_bytes(self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return path

    def token(self, sub: str | None = None, lifetime: int = 600, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iat": now, "exp": now + lifetime, "jti": str(uuid.uuid4()), **claims}
        if sub is not None:
            payload["sub"] = sub
        return jwt.encode(payload, self.key, algorithm=self.alg,
                          headers={"kid": thumbprint(self.key.public_key())})

    def headers(self, sub: str | None = None, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **claims)}"}


def write_config(directory: Path, tokens: list[TokenSettings], issuers: list[Issuer],
                 *, allow_secret_import: bool = False, extra: str = "") -> Config:
    """A gateway config naming ``tokens`` and trusting ``issuers``."""
    text = "".join(token_toml(t) for t in tokens)
    text += f"[vault]\nallow_secret_import = {'true' if allow_secret_import else 'false'}\n{extra}"
    for issuer in issuers:
        text += f'[[vault.issuers]]\nname = "{issuer.name}"\nkeys = "{issuer.write_public(directory)}"\n'
    path = directory / "gateway.toml"
    path.write_text(text)
    return load_config(path)
