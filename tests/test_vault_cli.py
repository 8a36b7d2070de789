"""`gateway tokens init` creates the dev issuer key; `gateway jwt issue` mints tokens the issuer accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jwt

from gateway.config import load_config
from gateway.core.issuers import IssuerSet
from tests.tokens import SOFTHSM_MODULE

CONFIG = f"""\
[[tokens]]
name = "t"
module = "{SOFTHSM_MODULE}"
label = "x"
pin_env = "UNUSED_PIN"
"""


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("gateway", path=os.path.dirname(sys.executable))
    argv = [script] if script else [sys.executable, "-m", "gateway.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


def test_jwt_issue_options(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG + '[vault]\ndev_issuer_key = "keys/dev.key"\n'
                    '[[vault.issuers]]\nname = "dev"\nkeys = "keys/dev.pub"\niss = "gw"\naud = "vault"\n')
    assert gateway("jwt", "issue", "--config", str(path), "--sub", "user:x").returncode == 2  # no key yet

    init = gateway("tokens", "init", "--config", str(path))
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "keys" / "dev.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "dev.pub").is_file()

    issued = gateway("jwt", "issue", "--config", str(path), "--sub", "organization:5e0b6c1a-3c6e-4c55-8a9e-0b1f5f0e7d11",
                     "--scope", "keys:derive", "--claims", json.dumps({"prvd": {"permissions": 7}}), "--lifetime", "90")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = IssuerSet.load(load_config(path).vault.issuers).verify(token).claims
    assert claims["sub"] == "organization:5e0b6c1a-3c6e-4c55-8a9e-0b1f5f0e7d11"
    assert (claims["scope"], claims["prvd"], claims["iss"], claims["aud"]) == ("keys:derive", {"permissions": 7}, "gw", "vault")
    assert claims["exp"] - claims["iat"] == 90

    bad = gateway("jwt", "issue", "--config", str(path), "--sub", "s", "--claims", "[1]")
    assert bad.returncode == 2 and "--claims: expected a JSON object" in bad.stderr
    assert gateway("jwt", "issue", "--config", str(path), "--sub", "s", "--lifetime", "0").returncode == 1


def test_jwt_issue_needs_a_dev_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG)
    result = gateway("jwt", "issue", "--config", str(path), "--sub", "user:x")
    assert result.returncode == 2
    assert "vault.dev_issuer_key: missing" in result.stderr
    assert gateway("jwt", "issue", "--help").returncode == 0
