"""The development banner of ``make run``: the dev user's passphrase, the URL and a
derive request that works when pasted (``[hem] dev_user``; never in production).

The curl line carries a bearer token the gateway mints for the dev user
(scope ``keymgmt:gen``, 8 h) and the kid of a dev base key it keeps in the
token (label ``dev-base``), so it needs no HEM client; real clients log in with
the passphrase (docs/hem.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from gateway.core.hem.meta import b64
from gateway.core.hem.types import KeyType
from gateway.core.hem.users import dev_passphrase
from gateway.errors import GatewayError
from gateway.http.hem.state import hem_service
from gateway.http.keys import CONFIG_KEY

log = logging.getLogger(__name__)

DEV_BASE_LABEL = "dev-base"


def _ca_file(app: web.Application) -> str | None:
    """The CA a client should trust for this server's certificate: the dev CA when in use."""
    from gateway import tls

    config = app[CONFIG_KEY]
    if tls.uses_dev_tls(config):
        ca = tls.dev_tls_dir(config) / tls.CA_CERT_NAME
        if ca.is_file():
            return str(ca)
    return None


_printed_by: list[int] = []  # keeps the lock's descriptor open for the process's lifetime


def _first_worker(state_dir: Path) -> bool:
    """Only one process of a multi-worker server prints (whichever locks first)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / "hem-banner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _printed_by.append(fd)
    return True


async def print_banner(app: web.Application) -> None:
    config = app[CONFIG_KEY]
    hem = config.hem
    assert hem is not None and hem.dev_user is not None and hem.users_file is not None
    if not _first_worker(config.state_dir / "hem"):
        return
    try:
        service = await hem_service(app)
        user = next((u for u in service.auth.users if u.name == hem.dev_user), None)
        if user is None:
            log.warning("HEM dev user %r is not in %s; run `gateway tokens init`", hem.dev_user, hem.users_file)
            return
        keys = service.keys
        base = next((k for k in await keys.all() if k.meta.label == DEV_BASE_LABEL), None)
        caps = service.token.capabilities
        key_type = KeyType.CURVE25519 if KeyType.CURVE25519.curve in caps.ecdh_curves else KeyType.SECP256R1
        if base is None:
            kid = await keys.create({"label": DEV_BASE_LABEL, "type": key_type.value, "mode": "ECDH"})
        else:
            kid, key_type = base.kid, base.meta.type
        if key_type is KeyType.CURVE25519:
            peer = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        token = await service.auth.issue_for(user, "keymgmt:gen")
    except GatewayError as exc:
        log.warning("HEM dev banner skipped: %s", exc.message)
        return
    server = config.server
    scheme = "https" if server.tls else "http"
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    url = f"{scheme}://{host}:{server.port}" if ":" not in host else f"{scheme}://[{host}]:{server.port}"
    passphrase = dev_passphrase(hem.users_file, hem.dev_user) or "(unknown: set HEM_PASSPHRASE)"
    body = json.dumps({"kid": kid.hex(), "label": "derived", "type": "AES256", "pubkey": b64(peer)}, separators=(",", ":"))
    ca = _ca_file(app)
    trust = f"--cacert {shlex.quote(ca)}" if ca else "-k"
    lines = [
        "",
        "HEM dialect (Encedo HEM REST API) -- development",
        f"  URL:        {url}/api/   (status: {url}/api/system/status)",
        f"  user:       {hem.dev_user}",
        f"  passphrase: {passphrase}   (HEM_PASSPHRASE overrides it)",
        f"  eid:        {service.auth.eid}",
        f"  derive recipe: {keys.recipe.value}; base key {kid.hex()} ({key_type.value}, label {DEV_BASE_LABEL!r})",
        "  A derive to paste (bearer token for the dev user, scope keymgmt:gen, valid 8 h):",
        f"  curl {trust} -sS -X POST {url}/api/keymgmt/derive \\",
        f"    -H {shlex.quote('Authorization: Bearer ' + token)} \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d {shlex.quote(body)}",
    ]
    if scheme != "https":
        lines.append("  NOTE: TLS is not configured ([server] tls_cert/tls_key): HEM answers 418 over plain HTTP.")
    print("\n".join(lines) + "\n", file=sys.stdout, flush=True)
