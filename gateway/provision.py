"""Create development tokens, idempotently, by shelling out to the Debian tools.

SoftHSM2 tokens are made with ``softhsm2-util`` and NSS databases with
``certutil`` (packages softhsm2 and libnss3-tools).  This module never imports
``pkcs11``: SoftHSM2 scans its token directory only at ``C_Initialize`` and a
module is initialised once per process, so tokens must exist before any
process loads the module; NSS softoken likewise opens one database per
process.  Creating tokens in a child process keeps this process clean.

PINs go to ``softhsm2-util`` on its command line (it reads them from a
terminal otherwise), but never into a log line or an error message: every
command is shown with secrets replaced by ``***`` and tool output is redacted.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.config import SOFTHSM2_CONF_NAME
from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from gateway.config import Config, TokenConfig

log = logging.getLogger(__name__)

PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIR_MODE: Final = 0o700
SO_PIN_FILE_NAME: Final = "so.pin"
NSS_DB_FILE_NAME: Final = "cert9.db"
TOOL_TIMEOUT_SECONDS: Final = 120
# SoftHSM2 limits (softhsm2-util prompts, and would hang without a terminal, otherwise).
MIN_PIN_LENGTH: Final = 4
MAX_PIN_LENGTH: Final = 255
MAX_LABEL_BYTES: Final = 32
_REDACTED: Final = "***"


class ProvisionError(GatewayError):
    """A provisioning tool failed; the message names the command (PINs redacted)."""


@dataclass(frozen=True)
class ProvisionResult:
    """What ``gateway tokens init`` did for one configured token."""

    name: str
    kind: str
    directory: Path
    created: bool  # False: it existed already and was left alone


# --------------------------------------------------------------------------- helpers


def random_pin() -> str:
    """A fresh random PIN (24 hex characters: fine for SoftHSM2 and NSS alike)."""
    return secrets.token_hex(12)


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)


def _read_pin_file(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    pin = text.splitlines()[0] if text else ""
    if not pin:
        raise ProvisionError(f"{path} is empty; expected a PIN on its first line")
    return pin


def ensure_pin_file(path: Path) -> str:
    """Return the PIN stored in ``path``, first creating it (random, mode 0600) if missing."""
    _make_private_dir(path.parent)
    pin = random_pin()
    try:
        # O_EXCL: never overwrite a PIN another process has just written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return _read_pin_file(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(pin + "\n")
    log.info("wrote a new random PIN to %s", path)
    return pin


def _redact(text: str, hidden: Sequence[str]) -> str:
    for value in hidden:
        if value:
            text = text.replace(value, _REDACTED)
    return text


def _run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
         hidden: Sequence[str] = (), package: str) -> str:
    """Run a tool and return its stdout; raise ProvisionError with secrets redacted.

    ``hidden`` lists argument values (PINs) that must not appear anywhere we
    print.  stdin is /dev/null so a tool that falls back to prompting fails
    instead of hanging.
    """
    shown = _redact(" ".join(_REDACTED if arg in hidden else shlex.quote(arg) for arg in argv), hidden)
    log.debug("running %s", shown)
    try:
        proc = subprocess.run(
            list(argv), env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise ProvisionError(f"{argv[0]} not found; install the Debian package {package} "
                             "(`make` installs it)") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"{shown} did not finish within {TOOL_TIMEOUT_SECONDS}s") from None
    if proc.returncode != 0:
        output = _redact((proc.stderr.strip() or proc.stdout.strip()), hidden)
        raise ProvisionError(f"{shown} failed with exit code {proc.returncode}: {output}")
    return proc.stdout


# --------------------------------------------------------------------------- SoftHSM2


def softhsm_conf_text(directory: Path) -> str:
    """The SOFTHSM2_CONF content for a token store under ``directory``."""
    return (
        f"# Written by gateway.provision; tokens live in {directory / 'tokens'}\n"
        f"directories.tokendir = {directory / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )


def write_softhsm_conf(directory: Path) -> Path:
    """Create ``directory/tokens/`` and ``directory/softhsm2.conf``; return the conf path."""
    directory = Path(os.path.abspath(directory))
    _make_private_dir(directory)
    _make_private_dir(directory / "tokens")
    conf = directory / SOFTHSM2_CONF_NAME
    text = softhsm_conf_text(directory)
    if not conf.is_file() or conf.read_text(encoding="utf-8") != text:
        # Write-then-rename so a concurrently starting module never reads half a file.
        tmp = conf.with_name(conf.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(conf)
    return conf


def _softhsm_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SOFTHSM2_CONF": str(conf)}


def softhsm_labels(conf: Path) -> list[str]:
    """Labels of the initialised tokens ``softhsm2-util --show-slots`` lists under ``conf``."""
    out = _run(["softhsm2-util", "--show-slots"], env=_softhsm_env(conf), package="softhsm2")
    # Token labels are space-padded to 32 bytes; free slots show an empty label.
    labels = (m.group(1) for m in re.finditer(r"^\s*Label:[ \t]*(.*?)\s*$", out, re.MULTILINE))
    return [label for label in labels if label]


def _check_pin(pin: str, what: str) -> None:
    if not MIN_PIN_LENGTH <= len(pin) <= MAX_PIN_LENGTH:
        raise ProvisionError(f"the {what} must be {MIN_PIN_LENGTH} to {MAX_PIN_LENGTH} characters long")


def _ensure_softhsm_token(directory: Path, label: str, pin: str, so_pin: str | None) -> tuple[Path, bool]:
    if not label or len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        raise ProvisionError(f"token label {label!r} must be 1 to {MAX_LABEL_BYTES} bytes")
    _check_pin(pin, "user PIN")
    conf = write_softhsm_conf(directory)
    if label in softhsm_labels(conf):
        log.debug("SoftHSM2 token %r already exists in %s", label, conf.parent)
        return conf, False
    if so_pin is None:
        so_pin = ensure_pin_file(conf.parent / SO_PIN_FILE_NAME)
    _check_pin(so_pin, "SO PIN")
    _run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
        env=_softhsm_env(conf), hidden=(pin, so_pin), package="softhsm2",
    )
    log.debug("created SoftHSM2 token %r in %s", label, conf.parent)
    return conf, True


def ensure_softhsm_token(directory: Path, label: str, pin: str, so_pin: str | None) -> Path:
    """Make sure a SoftHSM2 token ``label`` exists under ``directory``; return its SOFTHSM2_CONF.

    Writes ``directory/softhsm2.conf`` (token store ``directory/tokens``) and
    initialises a free slot only when ``--show-slots`` does not list the label
    yet.  ``so_pin`` None: a random SO PIN is kept in ``directory/so.pin``.
    Run it before any process that should see the token loads SoftHSM2.
    """
    return _ensure_softhsm_token(directory, label, pin, so_pin)[0]


# --------------------------------------------------------------------------- NSS


def _ensure_nss_db(directory: Path, password: str) -> bool:
    directory = Path(os.path.abspath(directory))
    _make_private_dir(directory)
    if (directory / NSS_DB_FILE_NAME).exists():
        log.debug("NSS database already exists in %s", directory)
        return False
    # certutil reads the new password from a file: a private temporary one, removed at once.
    fd, pw_name = tempfile.mkstemp(prefix=".pw-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password)
        _run(["certutil", "-N", "-d", f"sql:{directory}", "-f", pw_name],
             hidden=(password,), package="libnss3-tools")
    finally:
        os.unlink(pw_name)
    log.debug("created NSS database in %s", directory)
    return True


def ensure_nss_db(directory: Path, password: str) -> None:
    """Make sure an NSS sql database protected by ``password`` exists in ``directory``.

    Does nothing when ``directory/cert9.db`` exists (the password is not changed).
    """
    _ensure_nss_db(directory, password)


# --------------------------------------------------------------------------- from the config


def _pin_for(token: TokenConfig) -> str:
    """The token's user PIN; a missing pin_file is created with a random PIN."""
    if token.pin.file is not None:
        return ensure_pin_file(token.pin.file)
    return token.pin.resolve()


def _so_pin_for(token: TokenConfig) -> str | None:
    assert token.provision is not None
    var = token.provision.so_pin_env
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{token.key}.provision.so_pin_env: environment variable {var} "
                          "is not set or empty; expected the SO PIN")
    return value


def _provision_token(token: TokenConfig) -> ProvisionResult:
    provision = token.provision
    assert provision is not None
    if provision.kind == "softhsm2":
        assert token.label is not None  # the config requires it for softhsm2
        existed = token.label in softhsm_labels(write_softhsm_conf(provision.directory))
    else:
        existed = (provision.directory / NSS_DB_FILE_NAME).exists()
    if existed and token.pin.file is not None and not token.pin.file.exists():
        # A fresh random PIN cannot open a token created with another one.
        raise ProvisionError(
            f"{token.key}.pin_file: {token.pin.file} is missing but token {token.name!r} already "
            f"exists in {provision.directory}, and a new random PIN would not open it; "
            f"restore the file, or remove {provision.directory} to start over"
        )
    pin = _pin_for(token)
    if provision.kind == "softhsm2":
        assert token.label is not None
        _, created = _ensure_softhsm_token(provision.directory, token.label, pin, _so_pin_for(token))
    else:
        created = _ensure_nss_db(provision.directory, pin)
    return ProvisionResult(token.name, provision.kind, provision.directory, created)


def provision_tokens(config: Config) -> list[ProvisionResult]:
    """Create every token that has a ``[tokens.provision]`` table (and its PIN file)."""
    return [_provision_token(t) for t in config.tokens if t.provision is not None]
