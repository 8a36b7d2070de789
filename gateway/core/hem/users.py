"""HEM users: configured by public key, never by passphrase.

A HEM client turns the passphrase into an X25519 private key with
``PBKDF2-HMAC-SHA256(passphrase, salt = eid, 600000 iterations, 32 bytes)``;
the salt is the ``eid`` STRING exactly as the challenge sends it (its UTF-8
bytes, not the base64-decoded value: that is what the public HEM clients do).
The public key of that private key is what the gateway stores.

This module must not import ``gateway.token`` (the CLI uses it without a token).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from gateway.errors import ConfigError

PBKDF2_ITERATIONS: Final = 600_000
ROLES: Final = ("U", "M")
DEV_PASSPHRASE_ENV: Final = "HEM_PASSPHRASE"


@dataclass(frozen=True)
class HemUser:
    name: str
    public_key: bytes  # 32-byte X25519 public key
    role: str = "U"  # "U" user or "M" master

    @property
    def pubkey_b64(self) -> str:
        return base64.b64encode(self.public_key).decode("ascii")


def login_private_key(passphrase: str, eid: str, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    """The X25519 private key a HEM client derives from ``passphrase`` (handle with care)."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=eid.encode("utf-8"), iterations=iterations)
    return kdf.derive(passphrase.encode("utf-8"))


def public_key_for(passphrase: str, eid: str, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    private = X25519PrivateKey.from_private_bytes(login_private_key(passphrase, eid, iterations))
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected the user's X25519 public key in base64 (`gateway hem-user add` prints it)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not valid base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: an X25519 public key is 32 bytes, got {len(raw)}")
    return raw


def user_entry_toml(user: HemUser, table: str = "hem.users") -> str:
    """The config entry for ``user``."""
    return f'[[{table}]]\nname = "{user.name}"\npubkey = "{user.pubkey_b64}"\nrole = "{user.role}"\n'


# --------------------------------------------------------------------------- the users file


@dataclass(frozen=True)
class UsersFile:
    """``[hem] users_file``: an optional ``eid`` and ``[[users]]`` entries."""

    eid: str | None
    users: tuple[HemUser, ...]


def load_users_file(path: Path) -> UsersFile:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"hem.users_file: {path} does not exist (for the dev user, `gateway tokens init` creates it)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"hem.users_file: cannot read {path}: {exc}") from None
    eid = data.get("eid")
    if eid is not None and (not isinstance(eid, str) or not eid):
        raise ConfigError(f"hem.users_file: {path}: eid must be a non-empty string")
    users = []
    for i, entry in enumerate(data.get("users", [])):
        where = f"hem.users_file: {path}: users[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{where}: expected a table with name and pubkey")
        role = entry.get("role", "U")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: expected \"U\" or \"M\", got {role!r}")
        users.append(HemUser(entry["name"], parse_public_key(entry.get("pubkey"), f"{where}.pubkey"), role))
    return UsersFile(eid, tuple(users))


def merge_users(*groups: Iterable[HemUser]) -> tuple[HemUser, ...]:
    """All users; a name or public key used twice is a ConfigError."""
    names: set[str] = set()
    keys: set[bytes] = set()
    merged: list[HemUser] = []
    for group in groups:
        for user in group:
            if user.name in names:
                raise ConfigError(f"hem.users: the user name {user.name!r} is configured twice")
            if user.public_key in keys:
                raise ConfigError(f"hem.users: user {user.name!r} has the same public key as another user")
            names.add(user.name)
            keys.add(user.public_key)
            merged.append(user)
    return tuple(merged)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


def dev_passphrase_path(users_file: Path, name: str) -> Path:
    return users_file.with_name(f"{name}.passphrase")


def dev_passphrase(users_file: Path, name: str) -> str | None:
    """The dev user's passphrase: ``HEM_PASSPHRASE`` if set, else the file ``tokens init`` wrote."""
    env = os.environ.get(DEV_PASSPHRASE_ENV)
    if env:
        return env
    try:
        return dev_passphrase_path(users_file, name).read_text(encoding="utf-8").splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None


def provision_dev_user(users_file: Path, name: str, eid: str | None) -> tuple[str, bool]:
    """Make sure ``users_file`` holds an eid and a dev user whose passphrase we know.

    The passphrase is ``HEM_PASSPHRASE`` when set, else a random one kept in
    ``<name>.passphrase`` (mode 0600) beside the users file.  Returns
    (message, changed).  Other users in the file are kept.
    """
    existing = load_users_file(users_file) if users_file.exists() else UsersFile(None, ())
    file_eid = existing.eid or eid or base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    passphrase = dev_passphrase(users_file, name)
    if passphrase is None:
        passphrase = secrets.token_urlsafe(15)
        _write_private(dev_passphrase_path(users_file, name), passphrase + "\n")
    effective_eid = eid or file_eid
    wanted = HemUser(name, public_key_for(passphrase, effective_eid), "U")
    current = next((u for u in existing.users if u.name == name), None)
    if current == wanted and existing.eid == file_eid:
        return f"HEM dev user {name!r} already in {users_file}", False
    others = [u for u in existing.users if u.name != name]
    _write_private(users_file, _users_file_text(file_eid, [*others, wanted]))
    return f"HEM dev user {name!r} written to {users_file}", True


def _users_file_text(eid: str | None, users: Iterable[HemUser]) -> str:
    lines = ["# HEM users (public keys only, never passphrases; `gateway hem-user add --write` adds one)"]
    if eid:
        lines.append(f'eid = "{eid}"')
    lines.append("")
    lines += [user_entry_toml(u, "users") for u in users]
    return "\n".join(lines)


def add_user_to_file(path: Path, user: HemUser, eid: str | None) -> None:
    """Add ``user`` to the users file (replacing one of the same name); keeps its eid."""
    existing = load_users_file(path) if path.exists() else UsersFile(None, ())
    users = [u for u in existing.users if u.name != user.name] + [user]
    merge_users(users)
    _write_private(path, _users_file_text(existing.eid or eid, users))
