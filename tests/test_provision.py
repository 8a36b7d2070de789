"""gateway.provision: real dev tokens via softhsm2-util and certutil, idempotently."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.provision import (
    ProvisionError,
    _run,
    ensure_nss_db,
    ensure_pin_file,
    ensure_softhsm_token,
    provision_tokens,
    softhsm_labels,
)
from tests.tokens import NSS_INIT_ARGS, NSS_MODULE, SOFTHSM_MODULE

SECRET = "pin-4711-secret"
SO_SECRET = "so-pin-0815-secret"


def show_slots(conf: Path) -> str:
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    return subprocess.run(["softhsm2-util", "--show-slots"], env=env, check=True,
                          capture_output=True, text=True).stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_does_not_import_pkcs11() -> None:
    # Run in a clean interpreter: this one may have loaded pkcs11 for other tests.
    code = "import sys, gateway.provision; sys.exit('pkcs11' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_softhsm_token_created_then_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "softhsm"
    conf = ensure_softhsm_token(directory, "fresh", SECRET, SO_SECRET)
    assert conf == directory / "softhsm2.conf"
    text = conf.read_text()
    assert f"directories.tokendir = {directory / 'tokens'}\n" in text
    for line in ("objectstore.backend = file", "log.level = ERROR", "slots.removable = false"):
        assert line in text
    assert "Label:            fresh " in show_slots(conf)
    token_dirs = sorted(p.name for p in (directory / "tokens").iterdir())
    assert len(token_dirs) == 1

    # Second call: same result, no second token.
    assert ensure_softhsm_token(directory, "fresh", SECRET, SO_SECRET) == conf
    assert sorted(p.name for p in (directory / "tokens").iterdir()) == token_dirs
    assert softhsm_labels(conf) == ["fresh"]

    # Another label in the same store is added next to it.
    ensure_softhsm_token(directory, "second", SECRET, SO_SECRET)
    assert sorted(softhsm_labels(conf)) == ["fresh", "second"]


def test_softhsm_random_so_pin_file(tmp_path: Path) -> None:
    conf = ensure_softhsm_token(tmp_path, "auto-so", SECRET, None)
    so_pin = tmp_path / "so.pin"
    assert mode(so_pin) == 0o600
    assert len(so_pin.read_text().strip()) >= 16
    assert softhsm_labels(conf) == ["auto-so"]


def test_errors_do_not_show_pins(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as info:
        ensure_softhsm_token(tmp_path, "short", "123", SO_SECRET)
    assert "123" not in info.value.message
    # A label that is too long for the token: softhsm2-util is never reached.
    with pytest.raises(ProvisionError, match="label"):
        ensure_softhsm_token(tmp_path, "x" * 33, SECRET, SO_SECRET)


def test_tool_failure_is_redacted() -> None:
    # Every tool call goes through _run: a failing command that got a PIN as an
    # argument, and echoed it, must show neither in the error.
    with pytest.raises(ProvisionError) as info:
        _run(["sh", "-c", f"echo 'bad pin {SECRET}' >&2; exit 3", "sh", SECRET],
             hidden=(SECRET,), package="dash")
    message = info.value.message
    assert SECRET not in message
    assert "***" in message and "exit code 3" in message


def test_missing_tool_names_the_package() -> None:
    with pytest.raises(ProvisionError, match="install the Debian package some-package"):
        _run(["gateway-no-such-tool"], package="some-package")


def test_nss_db_created_once(tmp_path: Path) -> None:
    directory = tmp_path / "nss"
    ensure_nss_db(directory, "nsspin-1234")
    cert9 = directory / "cert9.db"
    assert cert9.is_file() and (directory / "key4.db").is_file()
    assert not list(directory.glob(".pw-*")), "temporary password file left behind"
    before = cert9.stat().st_mtime_ns
    ensure_nss_db(directory, "nsspin-1234")
    assert cert9.stat().st_mtime_ns == before
    assert not list(directory.glob(".pw-*"))


def test_pin_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "user.pin"
    pin = ensure_pin_file(path)
    assert mode(path) == 0o600 and path.read_text() == pin + "\n"
    assert ensure_pin_file(path) == pin


def test_provision_tokens_from_config(tmp_path: Path) -> None:
    config_path = tmp_path / "config" / "dev.toml"
    config_path.parent.mkdir()
    config_path.write_text(textwrap.dedent(f"""\
        state_dir = "../state"
        [[tokens]]
        name = "softhsm"
        module = "{SOFTHSM_MODULE}"
        label = "gateway-dev"
        pin_file = "../state/softhsm/user.pin"
        [tokens.provision]
        kind = "softhsm2"
        directory = "../state/softhsm"

        [[tokens]]
        name = "nss"
        module = "{NSS_MODULE}"
        label = "NSS Certificate DB"
        pin_file = "../state/nss/user.pin"
        init_args = "{NSS_INIT_ARGS}"
        [tokens.provision]
        kind = "nss"
        directory = "../state/nss"
        """))
    config = load_config(config_path)
    state = tmp_path / "state"

    results = provision_tokens(config)
    assert [(r.name, r.kind, r.created) for r in results] == [
        ("softhsm", "softhsm2", True), ("nss", "nss", True)]
    assert softhsm_labels(state / "softhsm" / "softhsm2.conf") == ["gateway-dev"]
    assert (state / "nss" / "cert9.db").is_file()
    for pin_file in (state / "softhsm" / "user.pin", state / "nss" / "user.pin", state / "softhsm" / "so.pin"):
        assert mode(pin_file) == 0o600
    # PINs are now readable through the config.
    assert all(s.pin for s in config.token_settings())

    again = provision_tokens(config)
    assert [r.created for r in again] == [False, False]

    # A lost PIN file must not be silently replaced for an existing token.
    (state / "softhsm" / "user.pin").unlink()
    with pytest.raises(ProvisionError, match=r"tokens\[0\]\.pin_file: .* is missing"):
        provision_tokens(config)
    assert not (state / "softhsm" / "user.pin").exists()
