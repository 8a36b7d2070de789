"""GET /healthz and /readyz on a real SoftHSM2 token, through the app factory."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import Config, load_config
from gateway.http.app import create_app
from gateway.token import TokenSet
from tests.conftest import SoftHSMSettingsFactory
from tests.tokens import SOFTHSM_MODULE

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def config(softhsm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A config naming the session's SoftHSM2 token "spare2" as "dev"."""
    monkeypatch.setenv("TEST_HEALTH_PIN", "1234")
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""\
        [[tokens]]
        name = "dev"
        module = "{SOFTHSM_MODULE}"
        label = "spare2"
        pin_env = "TEST_HEALTH_PIN"
        sessions = 2
        [tokens.environment]
        SOFTHSM2_CONF = "{softhsm_dir / 'softhsm2.conf'}"
        """))
    return load_config(path)


async def test_app_opens_tokens_from_config(aiohttp_client: ClientFactory, config: Config) -> None:
    client = await aiohttp_client(create_app(config))

    health = await client.get("/healthz")
    assert health.status == 200
    assert await health.json() == {"status": "ok", "pid": os.getpid()}

    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"ready": True, "tokens": {"dev": True}}


async def test_readyz_503_when_a_token_is_gone(
    aiohttp_client: ClientFactory, config: Config, softhsm_settings: SoftHSMSettingsFactory
) -> None:
    tokens = TokenSet.open([softhsm_settings("spare2", name="gone", sessions=1)])
    client = await aiohttp_client(create_app(config, tokens))
    tokens.close()  # the caller owns a token set it passes in; closed = unreachable
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert await ready.json() == {"ready": False, "tokens": {"gone": False}}
    assert (await client.get("/healthz")).status == 200
