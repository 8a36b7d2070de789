"""The seed page's curl example, end to end, as `make run` serves it.

The config is config/dev.toml's own [vault] section after [[tokens]] tables
naming the session's SoftHSM2 token and NSS database (in dev.toml's order and
under its names).  The dev issuer key comes from `gateway tokens init` and the
JWT from `gateway jwt issue`, both run as commands.  The seed's ids name a
vault and a key of provideplatform's own service, so the test first creates a
vault and a ChaCha20 key, then posts the seed's exact body and headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import load_config
from gateway.core.issuers import IssuerSet
from gateway.http.app import create_app
from gateway.token.settings import TokenSettings
from tests.conftest import SoftHSMSettingsFactory
from tests.vault_support import SEED_DERIVE_BODY, SEED_FIELDS, token_toml

REPO = Path(__file__).resolve().parent.parent
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("gateway", path=os.path.dirname(sys.executable))
    argv = [script] if script else [sys.executable, "-m", "gateway.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


def dev_like_config(directory: Path, softhsm: TokenSettings, nss: TokenSettings) -> Path:
    dev = (REPO / "config" / "dev.toml").read_text()
    vault_section = dev[dev.index("\n[vault]"):]
    config = directory / "config" / "dev.toml"
    config.parent.mkdir(parents=True)
    config.write_text(token_toml(softhsm) + token_toml(nss) + vault_section)
    return config


async def test_seed_curl_example_answers_201(aiohttp_client: ClientFactory, tmp_path: Path,
                                             softhsm_settings: SoftHSMSettingsFactory,
                                             nss_settings: TokenSettings) -> None:
    config_path = dev_like_config(tmp_path, softhsm_settings("vault", name="softhsm"), nss_settings)
    config = load_config(config_path)
    assert config.token_names == load_config(REPO / "config" / "dev.toml").token_names == ["softhsm", "nss"]

    init = gateway("tokens", "init", "--config", str(config_path))
    assert init.returncode == 0, init.stderr
    assert f"vault: dev issuer key created at {tmp_path / 'state' / 'vault' / 'dev-issuer.key'}" in init.stdout
    app_id = "cb2037f7-79fc-40f4-9720-ada636da4183"  # the seed token's subject
    issued = gateway("jwt", "issue", "--config", str(config_path), "--sub", f"application:{app_id}")
    assert issued.returncode == 0, issued.stderr
    jwt = issued.stdout.strip()
    assert IssuerSet.load(config.vault.issuers).verify(jwt).claims["sub"] == f"application:{app_id}"

    client = await aiohttp_client(create_app(config))  # opens the tokens from the config, as `serve` does
    auth = {"Authorization": f"bearer {jwt}"}  # lower-case, as in the seed
    vault = await client.post("/api/v1/vaults", json={"name": "chat", "description": "seed"}, headers=auth)
    assert vault.status == 201, await vault.text()
    vault_id = (await vault.json())["id"]
    key = await client.post(f"/api/v1/vaults/{vault_id}/keys", headers=auth, json={
        "type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "channel root",
        "description": "parent of channel keys"})
    assert key.status == 201, await key.text()
    key_id = (await key.json())["id"]

    response = await client.post(f"/api/v1/vaults/{vault_id}/keys/{key_id}/derive", data=SEED_DERIVE_BODY,
                                 headers={**auth, "Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    body = await response.json()
    assert set(body) == SEED_FIELDS
    uuid.UUID(body["id"])
    assert body["vault_id"] == vault_id
    assert (body["type"], body["usage"], body["spec"]) == ("symmetric", "encrypt/decrypt", "ChaCha20")
    assert (body["name"], body["description"]) == ("private chat", "this is a secure channel")
    assert body["created_at"].endswith("+00:00") and "." in body["created_at"]
