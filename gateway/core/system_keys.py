"""The gateway's own long-lived keys in a token, shared by every process on it.

Some keys belong to the deployment rather than to a client: the HEM bearer
signing key, the HEM challenge X25519 key, the audit MAC key.  Every gateway
process on the token must use the SAME object, or one process would refuse
another's bearer tokens.  They are found by their label (compact JSON naming
a role and a scope), never by a fixed kid: creation in PKCS#11 does not refuse
a duplicate CKA_ID, so two processes starting at once could otherwise create
two objects under one kid and each keep using "its" one.

Creation is a small protocol that needs nothing but the token itself (so it
also holds for processes on different hosts sharing a network HSM):

1. list; if a *committed* key of the role exists, use it (the smallest kid if
   a fault ever left two);
2. otherwise, if another process has a *pending* one younger than
   ``STALE_SECONDS``, wait a random moment and start again (stale pending keys
   are the remains of a crash and are destroyed);
3. otherwise create ours as *pending* under a random kid, list again, and
   destroy ours and start again if any other key of the role exists;
   else relabel ours *committed*.

A process commits only after seeing its key alone, and every later creator
sees it and withdraws, so at most one key is ever committed - provided every
process sees the others' objects at once.  SoftHSM2 does not quite promise
that: two processes writing at the same moment can each miss the other's
new object for a while (its change counter is a shared file).  Two guards:

- processes on one host take a file lock around the whole protocol
  (``lock_dir``), which serialises them completely;
- after committing, a process looks once more after a short settle time and,
  if another committed key of the role exists, keeps the smallest kid (as
  every reader does) and destroys its own when it lost.

Every function here blocks on the token: run them with ``await token.run(...)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.errors import NotFound, TokenUnavailable

if TYPE_CHECKING:
    from gateway.token import KeyInfo, Token

log = logging.getLogger(__name__)

LABEL_MARK: Final = "gw-sys"
STALE_SECONDS: Final = 30.0
MAX_ATTEMPTS: Final = 60
SETTLE_SECONDS: Final = 0.3
_PENDING: Final = "pending"
_COMMITTED: Final = "ok"


@dataclass(frozen=True)
class SystemKeyLabel:
    """What the label of a system key says."""

    role: str  # e.g. "hem-session", "audit-mac"
    scope: str  # the deployment it belongs to ("" for token-wide roles)
    state: str  # "pending" or "ok"
    created: float

    def encode(self) -> str:
        return json.dumps({LABEL_MARK: self.role, "s": self.scope, "st": self.state, "t": round(self.created, 3)},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, label: str) -> "SystemKeyLabel | None":
        if not label.startswith("{") or LABEL_MARK not in label:
            return None
        try:
            data = json.loads(label)
            return cls(str(data[LABEL_MARK]), str(data["s"]), str(data["st"]), float(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None


def is_system_label(label: str) -> bool:
    """Whether a key object is one of the gateway's own (never a client's key)."""
    return SystemKeyLabel.decode(label) is not None


def _of_role(token: Token, role: str, scope: str) -> list[tuple[KeyInfo, SystemKeyLabel]]:
    found = []
    for info in token.list_keys():
        meta = SystemKeyLabel.decode(info.label)
        if meta is not None and meta.role == role and meta.scope == scope:
            found.append((info, meta))
    return found


def find_system_key(token: Token, role: str, scope: str = "") -> KeyInfo | None:
    """The committed key of ``role`` in ``scope``, or None (no creation)."""
    committed = sorted((i for i, m in _of_role(token, role, scope) if m.state == _COMMITTED), key=lambda i: i.kid)
    return committed[0] if committed else None


@contextlib.contextmanager
def _host_lock(lock_dir: Path | None, role: str, scope: str) -> Iterator[None]:
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{role}-{scope}")[:100]
    fd = os.open(lock_dir / f"system-key-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def ensure_system_key(
    token: Token,
    role: str,
    scope: str,
    create: Callable[[bytes, str], KeyInfo],
    *,
    lock_dir: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> KeyInfo:
    """The committed key of ``role``/``scope``, created with ``create(kid, label)`` if none exists."""
    with _host_lock(lock_dir, role, scope):
        return _ensure(token, role, scope, create, sleep)


def _ensure(token: Token, role: str, scope: str, create: Callable[[bytes, str], KeyInfo],
            sleep: Callable[[float], None]) -> KeyInfo:
    for _ in range(MAX_ATTEMPTS):
        keys = _of_role(token, role, scope)
        committed = sorted((i for i, m in keys if m.state == _COMMITTED), key=lambda i: i.kid)
        if committed:
            return committed[0]
        now = time.time()
        waiting = False
        for info, meta in keys:
            if now - meta.created > STALE_SECONDS:
                log.warning("token %s: removing a %s key left pending by a crashed process", token.name, role)
                try:
                    token.destroy(info.kid)
                except NotFound:
                    pass
            else:
                waiting = True
        if waiting:
            sleep(random.uniform(0.05, 0.3))
            continue
        kid = os.urandom(16)
        create(kid, SystemKeyLabel(role, scope, _PENDING, now).encode())
        others = [i for i, _ in _of_role(token, role, scope) if i.kid != kid]
        if others:
            token.destroy(kid)
            sleep(random.uniform(0.05, 0.3))
            continue
        token.set_label(kid, SystemKeyLabel(role, scope, _COMMITTED, now).encode())
        sleep(SETTLE_SECONDS)
        committed = sorted((i for i, m in _of_role(token, role, scope) if m.state == _COMMITTED), key=lambda i: i.kid)
        if committed and committed[0].kid != kid:
            log.warning("token %s: another process committed a %s key at the same time; using it", token.name, role)
            if any(i.kid == kid for i in committed):
                try:
                    token.destroy(kid)
                except NotFound:
                    pass
            return committed[0]
        log.info("token %s: created the %s key", token.name, role)
        return token.get_key(kid)
    raise TokenUnavailable(f"token {token.name!r}: could not settle on one {role} key (other processes kept creating one)")
