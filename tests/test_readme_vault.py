"""The README's Provide Vault walk-through, pasted into bash, against `make run`'s setup.

`make run` is `gateway tokens init` then `gateway serve` on config/dev.toml.  Here the
same config file runs from a temporary folder (so its ``../state`` is a fresh one: a new
SoftHSM2 token, a new NSS database, the dev CA and the dev JWT issuer), on a free port
instead of 8443, and the README's shell lines run there unchanged otherwise: the dev JWT
from ``.venv/bin/gateway jwt issue``, then the seed's vault, key and derive calls with
curl over HTTPS.  The derive must answer 201 with exactly the seed's fields.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import ServiceSetup, free_port, running
from tests.tokens import NSS_MODULE, SOFTHSM_MODULE

ROOT = Path(__file__).resolve().parent.parent
SEED_FIELDS = {"id", "created_at", "vault_id", "type", "usage", "spec", "name", "description"}


def readme_block(after_heading: str) -> str:
    """The first ```sh block after the heading that starts with ``after_heading``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after_heading)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert match is not None, after_heading
    return match.group(1)


@pytest.fixture
def dev_setup(tmp_path: Path) -> Iterator[tuple[Path, int, str]]:
    """config/dev.toml served from ``tmp_path`` (tokens init, then serve), as `make run` does."""
    port = free_port()
    (tmp_path / "config").mkdir()
    text = (ROOT / "config" / "dev.toml").read_text()
    text = text.replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    text = text.replace('"/usr/lib/softhsm/libsofthsm2.so"', json.dumps(SOFTHSM_MODULE))
    text = text.replace('"/usr/lib/x86_64-linux-gnu/libsoftokn3.so"', json.dumps(NSS_MODULE))
    config = tmp_path / "config" / "dev.toml"
    config.write_text(text)
    # The README calls .venv/bin/gateway from the repository root.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "gateway").symlink_to(Path(sys.executable).parent / "gateway")
    env = {k: v for k, v in os.environ.items() if k not in ("HEM_PASSPHRASE", "GATEWAY_CONFIG", "SOFTHSM2_CONF")}
    env["PYTHONUNBUFFERED"] = "1"
    init = subprocess.run([sys.executable, "-m", "gateway.cli", "tokens", "init", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    # dev.toml has no plain listener; its paths are relative to the config file, not the cwd.
    setup = ServiceSetup(tmp_path, config, port, 0, tmp_path / "state" / "tls" / "ca.crt",
                         tmp_path / "state" / "softhsm", env)
    with running(setup) as server:
        yield tmp_path, port, server.output()


def test_readme_vault_walkthrough_answers_201_with_the_seed_fields(dev_setup: tuple[Path, int, str]) -> None:
    directory, port, _ = dev_setup
    try_it = readme_block("## Try it")
    vault = readme_block("### Provide Vault")
    assert "gateway jwt issue" in vault and "/derive" in vault
    script = "set -euo pipefail\n" + try_it + "\n" + vault
    script = script.replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "CURL_CA_BUNDLE")}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False,
                            cwd=directory, env=env)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    # The last command is `curl -i ... /derive`: a status line, headers, then the JSON body.
    answer = result.stdout[result.stdout.rindex("HTTP/1.1 "):]
    assert answer.startswith("HTTP/1.1 201 Created"), answer[:500]
    body = json.loads(answer.split("\n\n", 1)[1])  # text mode: CRLF read as LF
    assert set(body) == SEED_FIELDS, body
    assert (body["type"], body["usage"], body["spec"]) == ("symmetric", "encrypt/decrypt", "ChaCha20")
    assert (body["name"], body["description"]) == ("private chat", "this is a secure channel")
    # The first lines of the walk-through: the gateway is ready with both tokens.
    assert '"ready": true' in result.stdout and '"nss": true' in result.stdout


def test_the_vault_line_make_run_prints_works_when_pasted(dev_setup: tuple[Path, int, str]) -> None:
    directory, _, banner = dev_setup
    line = next(line for line in banner.splitlines() if line.strip().startswith("Vault: curl "))
    command = line.strip().removeprefix("Vault: ")
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "CURL_CA_BUNDLE")}
    result = subprocess.run(["bash", "-c", command + " -sS -w '\\n%{http_code}'"], capture_output=True, text=True,
                            timeout=60, check=False, cwd="/", env=env)
    body, code = result.stdout.rsplit("\n", 1)
    assert code == "200", (result.stdout, result.stderr)
    assert json.loads(body) == []  # a fresh application has no vaults yet
