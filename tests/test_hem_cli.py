"""`gateway hem-user add`, the dev user of `gateway tokens init`, and what `make run` prints:
the dev passphrase, the URL and a curl derive that works when pasted."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main
from gateway.token.settings import TokenSettings
from tests.hem_helpers import EID, b64, free_port, login, login_public, token_toml

START_TIMEOUT = 90.0


def hem_config(directory: Path, settings: TokenSettings | None = None, *, port: int = 18443, users_file: bool = True,
               dev: bool = False, eid: bool = True) -> Path:
    text = f'state_dir = "{directory / "state"}"\n'
    text += f'[server]\nlisten = "127.0.0.1:{port}"\n'
    if dev:
        text += f'tls_cert = "{directory / "state" / "tls" / "server.crt"}"\ntls_key = "{directory / "state" / "tls" / "server.key"}"\n'
    if settings is not None:
        text += token_toml(settings)
    else:
        text += '[[tokens]]\nname = "t"\nmodule = "libnone.so"\nlabel = "none"\npin = "0000"\n'
    text += "[hem]\n"
    if eid:
        text += f'eid = "{EID}"\n'
    if users_file:
        text += f'users_file = "{directory / "state" / "hem" / "users.toml"}"\n'
    if dev:
        text += 'dev_user = "dev"\n'
    path = directory / "gateway.toml"
    path.write_text(text)
    return path


def test_hem_user_add_prints_the_public_key_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = hem_config(tmp_path)
    monkeypatch.setenv("BOB_PASS", "bob's passphrase")
    assert main(["hem-user", "add", "bob", "--config", str(config), "--passphrase-env", "BOB_PASS"]) == 0
    out = capsys.readouterr().out
    entry = tomllib.loads(out)["hem"]["users"][0]
    assert entry == {"name": "bob", "pubkey": b64(login_public("bob's passphrase")), "role": "U"}
    assert "bob's passphrase" not in out
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("master pass\n"))
    assert main(["hem-user", "add", "boss", "--role", "M", "--config", str(config), "--write"]) == 0
    stored = tomllib.loads((tmp_path / "state" / "hem" / "users.toml").read_text())
    assert stored["users"] == [{"name": "boss", "pubkey": b64(login_public("master pass")), "role": "M"}]
    assert stat.S_IMODE((tmp_path / "state" / "hem" / "users.toml").stat().st_mode) == 0o600
    # without an eid anywhere the key cannot be computed: a configuration error
    no_eid = tmp_path / "no-eid"
    no_eid.mkdir()
    assert main(["hem-user", "add", "x", "--config", str(hem_config(no_eid, eid=False)), "--passphrase-env", "BOB_PASS"]) == 2
    assert "hem.eid" in capsys.readouterr().err


def test_tokens_init_provisions_the_dev_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = hem_config(tmp_path, dev=True, eid=False)
    monkeypatch.delenv("HEM_PASSPHRASE", raising=False)
    assert main(["tokens", "init", "--config", str(config)]) == 0
    assert "HEM dev user 'dev' written" in capsys.readouterr().out
    users_file = tmp_path / "state" / "hem" / "users.toml"
    passphrase_file = tmp_path / "state" / "hem" / "dev.passphrase"
    assert stat.S_IMODE(passphrase_file.stat().st_mode) == 0o600
    stored = tomllib.loads(users_file.read_text())
    passphrase = passphrase_file.read_text().strip()
    assert stored["users"] == [{"name": "dev", "pubkey": b64(login_public(passphrase, stored["eid"])), "role": "U"}]
    assert passphrase not in users_file.read_text()
    assert main(["tokens", "init", "--config", str(config)]) == 0
    assert "already in" in capsys.readouterr().out  # idempotent
    monkeypatch.setenv("HEM_PASSPHRASE", "my own dev passphrase")
    assert main(["tokens", "init", "--config", str(config)]) == 0
    again = tomllib.loads(users_file.read_text())
    assert again["eid"] == stored["eid"]  # the deployment id is stable
    assert again["users"][0]["pubkey"] == b64(login_public("my own dev passphrase", stored["eid"]))


@pytest.fixture
def served(softhsm_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """What `make run` does, on a config like config/dev.toml (dev TLS, dev user) naming the "hem" token:
    `gateway tokens init`, then `gateway serve`; yields the server's output until ready."""
    monkeypatch.delenv("HEM_PASSPHRASE", raising=False)
    port = free_port()
    config = hem_config(tmp_path, softhsm_settings("hem", name="softhsm"), port=port, dev=True, eid=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HEM_PASSPHRASE", None)
    init = subprocess.run([sys.executable, "-m", "gateway.cli", "tokens", "init", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert init.returncode == 0, init.stderr
    log = tmp_path / "serve.out"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                   stdout=out, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "pkcs11-gateway: serving" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield log.read_text(), tmp_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pasted_curl(output: str) -> str:
    """The curl example exactly as printed (continuation lines included)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl ") and "/api/keymgmt/derive" in line)
    command = []
    for line in lines[start:]:
        command.append(line.strip())
        if not line.rstrip().endswith("\\"):
            break
    return "\n".join(command)


async def test_make_run_prints_a_derive_that_works_when_pasted(served: tuple[str, Path]) -> None:
    output, directory = served
    passphrase = (directory / "state" / "hem" / "dev.passphrase").read_text().strip()
    assert f"passphrase: {passphrase}" in output
    url = re.search(r"URL:\s+(https://127\.0\.0\.1:\d+)/api/", output)
    assert url is not None
    command = pasted_curl(output)
    assert f"--cacert {directory / 'state' / 'tls' / 'ca.crt'}" in command
    result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True,
                            timeout=60, check=False)
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "200", (result.stdout, result.stderr)
    assert re.fullmatch(r"[0-9a-f]{32}", json.loads(body)["kid"])
    # the printed passphrase logs in with the HEM handshake
    context = ssl.create_default_context(cafile=str(directory / "state" / "tls" / "ca.crt"))
    eid = tomllib.loads((directory / "state" / "hem" / "users.toml").read_text())["eid"]

    class View:
        def __init__(self, session: aiohttp.ClientSession) -> None:
            self.session = session

        def get(self, path: str, **kwargs: Any) -> Any:
            return self.session.get(url.group(1) + path, **kwargs)  # type: ignore[union-attr]

        def post(self, path: str, **kwargs: Any) -> Any:
            return self.session.post(url.group(1) + path, **kwargs)  # type: ignore[union-attr]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        challenge = await (await session.get(url.group(1) + "/api/auth/token")).json()
        assert challenge["eid"] == eid
        token = await login(View(session), passphrase, "keymgmt:list")
        assert base64.urlsafe_b64decode(token.split(".")[1] + "==")
