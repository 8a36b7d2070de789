"""/docs renders in a real browser (Debian's chromium, headless) from local assets only,
and shows the derive operations of both dialects."""

from __future__ import annotations

import asyncio
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.config import load_config
from gateway.http.app import create_app
from tests.conftest import SoftHSMSettingsFactory
from tests.tokens import SOFTHSM_MODULE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A safety net for a browser that hangs, not a speed requirement.
BROWSER_DEADLINE_SECONDS = 180


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make` installs the Debian package)")
async def test_docs_page_renders_the_derive_operations(tmp_path: Path, softhsm_settings: SoftHSMSettingsFactory) -> None:
    from gateway.token import TokenSet

    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""\
        state_dir = "{tmp_path / 'state'}"
        [[tokens]]
        name = "t"
        module = "{SOFTHSM_MODULE}"
        label = "service"
        pin = "1234"
        [hem]
        eid = "c2VydmljZSB0ZXN0"
        """))
    assert CHROMIUM is not None
    tokens = TokenSet.open([softhsm_settings("service", name="t", sessions=2)])
    server = TestServer(create_app(load_config(path), tokens), host="127.0.0.1")
    await server.start_server()
    try:
        # The browser runs while this event loop keeps serving the page, the script and the document.
        process = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
            "--enable-logging=stderr", "--v=0", "--dump-dom", str(server.make_url("/docs")),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        dom_bytes, log_bytes = await asyncio.wait_for(process.communicate(), BROWSER_DEADLINE_SECONDS)
    finally:
        await server.close()
        tokens.close()
    dom, log = dom_bytes.decode(errors="replace"), log_bytes.decode(errors="replace")
    assert process.returncode == 0, log[-2000:]

    # Swagger UI ran (the scripts came from this server) and rendered every operation.
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert "/api/keymgmt/derive" in paths
    assert "/api/v1/vaults/{id}/keys/{key_id}/derive" in paths
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    assert "Derive a key (ECDH)" in dom and "Derive a key (ChaCha20)" in dom
    # Nothing was blocked by the page's Content-Security-Policy (chromium logs violations as CONSOLE lines).
    violations = [line for line in log.splitlines() if "Content Security Policy" in line or "Refused to" in line]
    assert violations == []
