"""The gateway command: help, exit codes, config errors on stderr without traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.tokens import SOFTHSM_MODULE

REPO = Path(__file__).resolve().parent.parent


def gateway(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (falls back to the module, same entry point)."""
    script = shutil.which("gateway", path=os.path.dirname(sys.executable))
    argv = [script] if script else [sys.executable, "-m", "gateway.cli"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_help() -> None:
    result = gateway("--help")
    assert result.returncode == 0
    for command in ("serve", "tokens", "capabilities"):
        assert command in result.stdout


def test_subcommand_help() -> None:
    for args in (("serve", "--help"), ("tokens", "init", "--help"), ("capabilities", "--help")):
        result = gateway(*args)
        assert result.returncode == 0, result.stderr
        assert "--config" in result.stdout


def test_usage_error_exits_2() -> None:
    result = gateway("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_bad_config_exits_2_and_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[[tokens]]\nname = "t"\nmodule = "{SOFTHSM_MODULE}"\nlabel = "x"\n'
                      'pin_env = "P"\nsessions = 0\n')
    for command in (("serve",), ("tokens", "init"), ("capabilities",)):
        result = gateway(*command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert "tokens[0].sessions" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = gateway("capabilities", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml: cannot read the config file" in result.stderr


def test_tokens_init_provisions_and_is_idempotent(tmp_path: Path) -> None:
    # A copy of the dev config inside tmp_path, so its ../state lands there too.
    (tmp_path / "config").mkdir()
    dev = (REPO / "config" / "dev.toml").read_text()
    (tmp_path / "config" / "dev.toml").write_text(dev)
    first = gateway("tokens", "init", "--config", "config/dev.toml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "softhsm: SoftHSM2 token created" in first.stdout
    assert "nss: NSS database created" in first.stdout
    second = gateway("tokens", "init", "--config", "config/dev.toml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already present") == 2
    assert (tmp_path / "state" / "softhsm" / "user.pin").is_file()
