"""Two real `gateway serve` processes on one SoftHSM2 token ("hem"), sharing a state directory.

A handshake whose two calls land on different processes works; a bearer token
from one is accepted by the other; a key created through one is derived from
through the other; a challenge used on one is refused on the other; and the
audit chain both wrote verifies.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.cli import main
from gateway.token.settings import TokenSettings
from tests.service_support import metric
from tests.hem_helpers import EID, PASSPHRASE, TlsFiles, bearer, ejwt, free_port, login, make_tls, token_toml, users_toml

START_TIMEOUT = 90.0


def config_file(directory: Path, name: str, port: int, settings: TokenSettings, tls: TlsFiles, state: Path) -> Path:
    text = (f'state_dir = "{state}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
            f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n' + token_toml(settings)
            + f'[hem]\neid = "{EID}"\nfailed_login_delay_ms = 0\n' + users_toml())
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


@dataclass
class Gateway:
    """One `gateway serve` child process and an HTTP view of it (relative paths, like a TestClient)."""

    process: subprocess.Popen[bytes]
    base: str
    session: aiohttp.ClientSession
    log: Path

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.base + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(self.base + path, **kwargs)


@pytest.fixture(scope="module")
def processes(softhsm_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[subprocess.Popen[bytes], int, Path, Path]]]:
    directory = tmp_path_factory.mktemp("two-processes")
    tls = make_tls(directory / "tls")
    settings = softhsm_settings("hem", name="softhsm")
    started = []
    try:
        for name in ("one", "two"):
            port = free_port()
            config = config_file(directory, name, port, settings, tls, directory / "state")
            log = directory / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                           stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            started.append((process, port, log, config))
        yield started
    finally:
        for process, _, _, _ in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _, _, _ in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def gateways(processes: list[tuple[subprocess.Popen[bytes], int, Path, Path]],
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[Gateway]]:
    ca = processes[0][3].parent / "tls" / "ca.crt"
    import ssl

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca))))
    views = [Gateway(p, f"https://127.0.0.1:{port}", session, log) for p, port, log, _ in processes]
    try:
        for view in views:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if view.process.poll() is not None:
                    pytest.fail(f"gateway exited with {view.process.returncode}:\n{view.log.read_text()}")
                try:
                    async with view.get("/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"gateway did not become ready:\n{view.log.read_text()}")
                await asyncio.sleep(0.2)
        yield views
    finally:
        await session.close()


async def json_of(response: Any, status: int = 200) -> Any:
    async with response as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def test_two_processes_share_keys_tokens_and_challenges(gateways: list[Gateway]) -> None:
    one, two = gateways
    # the challenge from one, answered to two
    challenge = await json_of(one.get("/api/auth/token"))
    proof = ejwt(challenge, PASSPHRASE, "keymgmt:gen")
    token = (await json_of(two.post("/api/auth/token", json={"auth": proof})))["token"]
    # ... and the challenge cannot be used again on one
    refused = await json_of(one.post("/api/auth/token", json={"auth": proof}), 401)
    assert "used already" in refused["message"]

    # a key created through one (with two's bearer token), derived from through two
    base = (await json_of(one.post("/api/keymgmt/create", headers=bearer(token),
                                   json={"label": "shared", "type": "CURVE25519"})))["kid"]
    shown = await json_of(two.get(f"/api/keymgmt/get/{base}", headers=bearer(token)))
    assert shown["label"] == "shared"
    peer = x25519.X25519PrivateKey.generate()
    peer_raw = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    derived = (await json_of(two.post("/api/keymgmt/derive", headers=bearer(token), json={
        "kid": base, "label": "from-two", "type": "AES256", "pubkey": base64.b64encode(peer_raw).decode()})))["kid"]

    # one sees it at once, with its metadata, and uses it
    assert (await json_of(one.get(f"/api/keymgmt/get/{derived}", headers=bearer(token))))["recipe"] == "raw"
    use = await login(one, PASSPHRASE, f"keymgmt:use:{derived}")
    sealed = await json_of(one.post("/api/crypto/cipher/encrypt", headers=bearer(use), json={
        "kid": derived, "alg": "AES256-GCM", "msg": base64.b64encode(b"across processes").decode()}))
    key = peer.exchange(x25519.X25519PublicKey.from_public_bytes(base64.b64decode(shown["pubkey"])))[-32:]
    plaintext = AESGCM(key).decrypt(base64.b64decode(sealed["iv"]),
                                    base64.b64decode(sealed["ciphertext"]) + base64.b64decode(sealed["tag"]), None)
    assert plaintext == b"across processes"
    listing = await login(two, PASSPHRASE, "keymgmt:list")
    kids = set()
    offset = 0
    while True:
        page = await json_of(two.get(f"/api/keymgmt/list/{offset}", headers=bearer(listing)))
        kids |= {e["kid"] for e in page["list"]}
        offset += page["listed"]
        if offset >= page["total"] or not page["listed"]:
            break
    assert {base, derived} <= kids

    # One of the two made every object change (SoftHSM2: gateway/token/writerelay.py); the other
    # sent its changes there.
    writers = relayed = 0.0
    for view in gateways:
        async with view.get("/metrics") as response:
            text = await response.text()
        writers += metric(text, "gateway_token_writer", token="softhsm")
        relayed += metric(text, "gateway_token_changes_relayed", token="softhsm")
    assert writers == 1 and relayed >= 1


async def test_the_audit_chain_of_both_processes_verifies(gateways: list[Gateway],
                                                          processes: list[tuple[subprocess.Popen[bytes], int, Path, Path]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    one, two = gateways
    for view in (one, two, one, two):
        await login(view, PASSPHRASE, "logger:get")
    assert main(["audit", "verify", "--config", str(processes[0][3])]) == 0
    out = capsys.readouterr().out
    assert "ok," in out
