"""is_secure: own TLS, or X-Forwarded-Proto=https from a configured trusted proxy only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.http.app import create_app
from gateway.token import TokenSet
from gateway.token.settings import TokenSettings
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    PASSPHRASE,
    bearer,
    ejwt,
    hem_settings,
    hem_tokens,
    ok,
    write_config,
)


async def plain_client(aiohttp_client: Any, tokens: TokenSet, settings: TokenSettings, directory: Path, proxies: str) -> Any:
    config = write_config(directory, [settings], extra=f"[server]\ntrusted_proxies = {proxies}\n")
    return await aiohttp_client(create_app(config, tokens))


async def test_forwarded_proto_from_a_trusted_proxy(aiohttp_client: Any, hem_tokens: TokenSet, hem_settings: TokenSettings,
                                                    tmp_path: Path) -> None:
    client = await plain_client(aiohttp_client, hem_tokens, hem_settings, tmp_path, '["10.0.0.0/8", "127.0.0.1"]')
    https = {"X-Forwarded-Proto": "https"}
    challenge = await ok(await client.get("/api/auth/token"))
    token = (await ok(await client.post("/api/auth/token", headers=https,
                                        json={"auth": ejwt(challenge, PASSPHRASE, "keymgmt:list")})))["token"]
    assert (await client.get("/api/keymgmt/list", headers={**https, **bearer(token)})).status == 200
    assert (await client.get("/api/keymgmt/list", headers=bearer(token))).status == 418
    assert (await client.get("/api/keymgmt/list", headers={"X-Forwarded-Proto": "http", **bearer(token)})).status == 418
    status = await ok(await client.get("/api/system/status", headers=https))
    assert status["https"] is True


async def test_forwarded_proto_from_anyone_else_is_ignored(aiohttp_client: Any, hem_tokens: TokenSet,
                                                           hem_settings: TokenSettings, tmp_path: Path) -> None:
    client = await plain_client(aiohttp_client, hem_tokens, hem_settings, tmp_path, '["10.1.2.3"]')
    answer = await ok(await client.get("/api/keymgmt/list", headers={"X-Forwarded-Proto": "https"}), 418)
    assert "TLS" in answer["message"]
