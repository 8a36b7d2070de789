"""Load the gateway's one TOML configuration file into frozen, validated dataclasses.

Everything is checked once, at start, so a bad deployment fails before it
touches a token.  Every problem raises :class:`gateway.errors.ConfigError`
whose message starts with the dotted key at fault (``tokens[1].module``) and
says what is expected.  Unknown keys are errors too: a typo must not silently
fall back to a default.  Relative paths are resolved against the directory of
the config file, so a config works from any working directory.

PINs are not read here: :class:`PinSource` records where a PIN lives and
:meth:`TokenConfig.settings` reads it, because ``gateway tokens init`` has to
load the config before it creates the dev PIN files.

To add a section (``[hem]``, ``[vault]``, ``[audit]``, ``[logging]``): write a
frozen dataclass with defaults, a ``_parse_<section>(table: _Table)`` that
reads it through the :class:`_Table` helpers and ends with
``table.finish()``, add a field to :class:`Config` and one line in
:func:`load_config`.  Unknown-key detection then covers it automatically.

This module must not import ``gateway.token`` at import time (its package pulls
in ``pkcs11``); :class:`TokenSettings` is imported where it is built.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.token.settings import TokenSettings

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8443
DEFAULT_SESSIONS: Final = 4
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_REQUEST_TIMEOUT: Final = 30.0  # seconds, whole request including the body upload
DEFAULT_READINESS_TIMEOUT: Final = 5.0  # seconds; a hung token turns /readyz red, not hung
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0  # seconds for in-flight requests after SIGTERM
MAX_WORKERS: Final = 64
CPU_AFFINITY_CHOICES: Final = ("auto", "off")  # server.cpu_affinity
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "text")
MAX_SESSIONS: Final = 1024
# PKCS#11 CK_TOKEN_INFO fixed-width fields: longer values can never match a token.
MAX_LABEL_BYTES: Final = 32
MAX_SERIAL_BYTES: Final = 16
# Placeholder in ``init_args`` replaced by the absolute provision directory.
DIRECTORY_PLACEHOLDER: Final = "{directory}"
SOFTHSM2_CONF_NAME: Final = "softhsm2.conf"

ProvisionKind = Literal["softhsm2", "nss"]
PROVISION_KINDS: Final[tuple[ProvisionKind, ...]] = ("softhsm2", "nss")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
_NSS_INIT_ARGS_EXAMPLE: Final = (
    "configdir='sql:{directory}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
)


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where the HTTP listener binds and, optionally, its TLS files."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Peers whose X-Forwarded-Proto is believed (a TLS-terminating proxy); see gateway/http/transport.py.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    readiness_timeout: float = DEFAULT_READINESS_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    workers: int = 1
    # "auto": with as many workers as CPUs (or a multiple), each worker keeps to one CPU
    # (gateway/server.py, worker_cpus); "off": the kernel places them.
    cpu_affinity: str = "auto"
    # Optional plain-HTTP listener serving only /healthz, /readyz and /metrics.
    plain_host: str | None = None
    plain_port: int | None = None
    # Testing only (tests/stress): serve /__test__/faults/* routes that break things on purpose.
    fault_hooks: bool = False

    @property
    def listen(self) -> str:
        """The address in the config's own ``host:port`` form (IPv6 bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the listener serves HTTPS (both files are configured)."""
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def plain_listen(self) -> str | None:
        """The plain-HTTP probe/metrics address as ``host:port``, or None."""
        if self.plain_host is None:
            return None
        host = f"[{self.plain_host}]" if ":" in self.plain_host else self.plain_host
        return f"{host}:{self.plain_port}"


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: level and line format of the process logs (stderr)."""

    level: str = "info"  # one of LOG_LEVELS
    format: str = "json"  # one of LOG_FORMATS: one JSON object per line, or plain text


@dataclass(frozen=True)
class PinSource:
    """Where a token PIN comes from; the PIN itself is only read by :meth:`resolve`.

    Exactly one of ``env``, ``file`` and ``literal`` is set.  ``literal`` is
    kept out of the repr so a logged config never shows it.
    """

    key: str  # the dotted key that configured it, e.g. "tokens[0].pin_file"
    env: str | None = None
    file: Path | None = None
    literal: str | None = field(default=None, repr=False)

    def resolve(self) -> str:
        """Return the PIN; raise :class:`ConfigError` (never containing it) if unavailable."""
        if self.literal is not None:
            return self.literal
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(
                    f"{self.key}: environment variable {self.env} is not set or empty; "
                    "expected it to hold the token's user PIN"
                )
            return value
        assert self.file is not None
        try:
            info = self.file.stat()
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{self.key}: {self.file} does not exist; expected a file holding the "
                "user PIN (for dev tokens, `gateway tokens init` creates it)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{self.key}: cannot read {self.file}: {reason}") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: %s is accessible by group/others; chmod 600 it", self.key, self.file)
        # The PIN is the first line; a trailing newline from an editor is not part of it.
        pin = text.splitlines()[0] if text else ""
        if not pin:
            raise ConfigError(f"{self.key}: {self.file} is empty; expected the PIN on its first line")
        return pin


@dataclass(frozen=True)
class ProvisionConfig:
    """``[tokens.provision]``: how ``gateway tokens init`` creates a dev token."""

    kind: ProvisionKind
    directory: Path  # SoftHSM2 token store + softhsm2.conf, or the NSS database directory
    so_pin_env: str | None = None  # softhsm2 only; None: random SO PIN kept in directory/so.pin

    @property
    def softhsm2_conf(self) -> Path:
        """The SOFTHSM2_CONF file that provisioning writes (meaningful for softhsm2)."""
        return self.directory / SOFTHSM2_CONF_NAME


@dataclass(frozen=True)
class TokenConfig:
    """One ``[[tokens]]`` entry, validated; :meth:`settings` hands it to the adapter."""

    key: str  # "tokens[<index>]", so later errors can name the entry
    name: str
    module: str
    label: str | None
    serial: str | None
    pin: PinSource
    init_args: str | None  # placeholders already substituted
    environment: Mapping[str, str]
    sessions: int
    provision: ProvisionConfig | None = None
    object_writes: str = "one-process"

    def settings(self) -> TokenSettings:
        """Resolve the PIN and build the adapter's :class:`TokenSettings`."""
        from gateway.token.settings import TokenSettings  # lazy: see module docstring

        return TokenSettings(
            name=self.name,
            module=self.module,
            label=self.label,
            serial=self.serial,
            pin=self.pin.resolve(),
            init_args=self.init_args,
            environment=dict(self.environment),
            sessions=self.sessions,
            object_writes=self.object_writes,
        )


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted JWT issuer (``[[vault.issuers]]``); key files are read by ``gateway.core.issuers``."""

    key: str  # the dotted key that configured it, e.g. "vault.issuers[0]"
    name: str
    keys: Path | None = None  # PEM public keys / certificates
    jwks: Path | None = None  # JWKS file
    iss: str | None = None  # required value of the iss claim
    aud: str | None = None  # required member of the aud claim


@dataclass(frozen=True)
class VaultConfig:
    """``[vault]``: the Provide Vault dialect (see docs/vault.md)."""

    issuers: tuple[IssuerConfig, ...] = ()
    dev_issuer_key: Path | None = None  # private key of `gateway jwt issue`
    allow_secret_import: bool = False  # tests/admin only: key create may carry key material


@dataclass(frozen=True)
class HemUserConfig:
    """One ``[[hem.users]]`` entry: a HEM user known by public key (``gateway hem-user add``)."""

    name: str
    public_key: bytes  # 32-byte X25519 public key
    role: str = "U"  # "U" user, "M" master


HemRecipe = Literal["auto", "raw", "hkdf-sha256"]
HEM_RECIPES: Final[tuple[HemRecipe, ...]] = ("auto", "raw", "hkdf-sha256")


@dataclass(frozen=True)
class HemConfig:
    """``[hem]``: the Encedo HEM dialect (docs/hem.md)."""

    eid: str | None = None  # None: the users file's eid
    label: str = "pkcs11-gateway"  # the challenge's lbl
    token: str | None = None  # token holding HEM keys; None: the first
    derive_recipe: HemRecipe = "auto"  # auto: hkdf-sha256 where the token has HKDF, else raw
    users: tuple[HemUserConfig, ...] = ()
    users_file: Path | None = None
    dev_user: str | None = None  # `tokens init` provisions it; `serve` prints its example
    bearer_max_lifetime: int = 28800
    failed_login_delay_ms: int = 500
    allow_asymmetric_derive: bool = False
    external_issuers: tuple[IssuerConfig, ...] = ()


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: the hash-chained, MAC-sealed audit log (gateway/core/audit.py)."""

    directory: Path
    token: str | None = None  # token holding the audit MAC key; None: the HEM token, else the first
    segment_bytes: int = 1 << 20


@dataclass(frozen=True)
class Config:
    """The whole configuration.  New sections become new fields (see module docstring)."""

    path: Path  # the file it was loaded from (absolute)
    state_dir: Path
    server: ServerConfig
    tokens: tuple[TokenConfig, ...]
    vault: VaultConfig = VaultConfig()
    hem: HemConfig | None = None  # None: no [hem] section, the HEM dialect is off
    audit: AuditConfig | None = None  # None (hand-built configs): state_dir/audit
    logging: LoggingConfig = LoggingConfig()

    @property
    def token_names(self) -> list[str]:
        """Token names in config order."""
        return [t.name for t in self.tokens]

    def token(self, name: str) -> TokenConfig:
        """The token configured under ``name``; KeyError if there is none."""
        for t in self.tokens:
            if t.name == name:
                return t
        raise KeyError(name)

    def token_settings(self) -> list[TokenSettings]:
        """Adapter settings for every token, in config order (reads the PINs)."""
        return [t.settings() for t in self.tokens]


# --------------------------------------------------------------------------- reading helpers


def _describe(value: object) -> str:
    """The TOML type of ``value``, for messages (never the value: it may be a PIN)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


class _Table:
    """A TOML table being read: knows its dotted path and which keys were asked for.

    Reading every expected key first and calling :meth:`finish` last turns any
    leftover key into an "unknown key" error that lists the valid ones.
    """

    def __init__(self, data: Mapping[str, Any], path: str, base_dir: Path) -> None:
        self.data = data
        self.path = path
        self.base_dir = base_dir
        self._known: list[str] = []

    def key(self, name: str) -> str:
        """Dotted path of ``name`` inside this table."""
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str) -> Any:
        if name not in self._known:
            self._known.append(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        """Whether ``name`` is present (and mark it as a known key)."""
        return self._get(name) is not None

    def error(self, name: str, message: str) -> ConfigError:
        """A ConfigError about key ``name`` of this table."""
        return ConfigError(f"{self.key(name)}: {message}")

    def optional_str(self, name: str) -> str | None:
        """A non-empty string, or None when absent."""
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_describe(value)}")
        if not value:
            raise self.error(name, "expected a non-empty string")
        return value

    def required_str(self, name: str, what: str = "a non-empty string") -> str:
        """A non-empty string that must be present; ``what`` describes it in the message."""
        value = self.optional_str(name)
        if value is None:
            raise self.error(name, f"missing; expected {what}")
        return value

    def seconds(self, name: str, default: float, minimum: float, maximum: float) -> float:
        """A duration in seconds (integer or float) in ``[minimum, maximum]``."""
        value = self._get(name)
        if value is None:
            return default
        expected = f"expected a number of seconds from {minimum:g} to {maximum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"{expected}, got {_describe(value)}")
        if not minimum <= value <= maximum:
            raise self.error(name, f"{expected}, got {value:g}")
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (a string); ``default`` when absent."""
        value = self._get(name)
        if value is None:
            return default
        if value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            got = repr(value) if isinstance(value, str) else _describe(value)
            raise self.error(name, f"expected one of {options}, got {got}")
        return str(value)

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """An integer in ``[minimum, maximum]``; ``default`` when absent."""
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                name, f"expected an integer from {minimum} to {maximum}, got {_describe(value)}"
            )
        if not minimum <= value <= maximum:
            raise self.error(name, f"expected an integer from {minimum} to {maximum}, got {value}")
        return value

    def resolve_path(self, value: str) -> Path:
        """``value`` as an absolute, normalised path (relative to the config file)."""
        return Path(os.path.normpath(self.base_dir / Path(value)))

    def optional_path(self, name: str) -> Path | None:
        """A path string resolved against the config file's directory, or None."""
        value = self.optional_str(name)
        return None if value is None else self.resolve_path(value)

    def required_path(self, name: str, what: str) -> Path:
        """A path that must be present."""
        return self.resolve_path(self.required_str(name, what))

    def subtable(self, name: str) -> _Table | None:
        """A nested table, or None when absent."""
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table [{self.key(name)}], got {_describe(value)}")
        return _Table(value, self.key(name), self.base_dir)

    def array_of_tables(self, name: str) -> list[_Table]:
        """An array of tables (``[[name]]``); empty list when absent."""
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"expected an array of tables [[{self.key(name)}]]")
        return [_Table(v, f"{self.key(name)}[{i}]", self.base_dir) for i, v in enumerate(value)]

    def string_map(self, name: str, key_re: re.Pattern[str], key_what: str) -> dict[str, str]:
        """A table of free-form keys (matching ``key_re``) to string values."""
        table = self.subtable(name)
        if table is None:
            return {}
        result: dict[str, str] = {}
        for k, v in table.data.items():
            if not key_re.fullmatch(k):
                raise table.error(k, f"invalid name; expected {key_what}")
            if not isinstance(v, str):
                raise table.error(k, f"expected a string, got {_describe(v)}")
            result[k] = v
        return result

    def finish(self) -> None:
        """Raise for the first key that was never asked for."""
        for name in self.data:
            if name not in self._known:
                hint = difflib.get_close_matches(name, self._known, n=1)
                maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
                expected = ", ".join(sorted(self._known))
                raise self.error(name, f"unknown key{maybe}; expected one of: {expected}")


# --------------------------------------------------------------------------- sections


def _parse_address(table: _Table, name: str) -> tuple[str, int] | None:
    """A ``host:port`` key (IPv6 bracketed), or None when absent."""
    value = table.optional_str(name)
    if value is None:
        return None
    expected = 'expected "host:port" such as "127.0.0.1:8443" or "[::1]:8443"'
    match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if match is None:
        raise table.error(name, f"{expected}, got {value!r}")
    v6, v6_port, host, port_text = match.groups()
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            raise table.error(name, f"{expected}; {v6!r} is not an IPv6 address") from None
        host, port_text = v6, v6_port
    elif not _HOSTNAME_RE.fullmatch(host):
        raise table.error(name, f"{expected}; {host!r} is not a host name or IPv4 address")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise table.error(name, f"{expected}; port must be from 1 to 65535, got {port}")
    return host, port


def _parse_listen(table: _Table) -> tuple[str, int]:
    return _parse_address(table, "listen") or (DEFAULT_HOST, DEFAULT_PORT)


def _parse_server(table: _Table) -> ServerConfig:
    host, port = _parse_listen(table)
    tls_cert = table.optional_path("tls_cert")
    tls_key = table.optional_path("tls_key")
    if (tls_cert is None) != (tls_key is None):
        missing = "tls_key" if tls_key is None else "tls_cert"
        present = "tls_cert" if missing == "tls_key" else "tls_key"
        raise table.error(missing, f"missing; expected a PEM file path since {table.key(present)} is set")
    trusted_proxies = _parse_networks(table, "trusted_proxies")
    max_body_bytes = table.integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1024, 1024**3)
    request_timeout = table.seconds("request_timeout", DEFAULT_REQUEST_TIMEOUT, 0.1, 3600)
    readiness_timeout = table.seconds("readiness_timeout", DEFAULT_READINESS_TIMEOUT, 0.1, 600)
    shutdown_timeout = table.seconds("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, 0, 3600)
    workers = table.integer("workers", 1, 1, MAX_WORKERS)
    cpu_affinity = table.choice("cpu_affinity", "auto", CPU_AFFINITY_CHOICES)
    plain = _parse_address(table, "plain_listen")
    if plain is not None and plain == (host, port):
        raise table.error("plain_listen", f"is the same address as {table.key('listen')}; "
                                          "expected a separate host:port for plain HTTP")
    fault_hooks = _bool(table, "fault_hooks", False)
    table.finish()
    return ServerConfig(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, trusted_proxies=trusted_proxies,
                        max_body_bytes=max_body_bytes, request_timeout=request_timeout,
                        readiness_timeout=readiness_timeout, shutdown_timeout=shutdown_timeout, workers=workers,
                        cpu_affinity=cpu_affinity, plain_host=None if plain is None else plain[0],
                        plain_port=None if plain is None else plain[1], fault_hooks=fault_hooks)


def _parse_logging(table: _Table | None) -> LoggingConfig:
    if table is None:
        return LoggingConfig()
    level = table.choice("level", "info", LOG_LEVELS)
    fmt = table.choice("format", "json", LOG_FORMATS)
    table.finish()
    return LoggingConfig(level=level, format=fmt)


def _parse_networks(table: _Table, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of IP addresses or CIDR networks."""
    value = table._get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise table.error(name, 'expected a list of IP addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/8"]')
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in value)
    except ValueError as exc:
        raise table.error(name, f"{exc}; expected IP addresses or networks such as \"10.0.0.0/8\"") from None


def _parse_pin(table: _Table) -> PinSource:
    present = [k for k in ("pin", "pin_env", "pin_file") if table.has(k)]
    if len(present) != 1:
        keys = ", ".join(table.key(k) for k in ("pin", "pin_env", "pin_file"))
        found = f"found {' and '.join(present)}" if present else "found none"
        raise ConfigError(
            f"{table.key('pin')}: set exactly one of {keys} ({found}); "
            "pin_env or pin_file is preferred"
        )
    (kind,) = present
    if kind == "pin_env":
        env = table.required_str("pin_env")
        if not _ENV_NAME_RE.fullmatch(env):
            raise table.error("pin_env", f"expected an environment variable name, got {env!r}")
        return PinSource(key=table.key("pin_env"), env=env)
    if kind == "pin_file":
        return PinSource(key=table.key("pin_file"), file=table.required_path("pin_file", "a path"))
    value = table._get("pin")
    if not isinstance(value, str) or not value:
        # Never echo the value: it is (meant to be) a PIN.
        raise table.error("pin", f"expected a non-empty string, got {_describe(value)}")
    log.warning("%s: PIN written in the config file; use pin_env or pin_file outside development",
                table.key("pin"))
    return PinSource(key=table.key("pin"), literal=value)


def _parse_provision(table: _Table) -> ProvisionConfig:
    kind = table.required_str("kind", 'one of "softhsm2", "nss"')
    if kind not in PROVISION_KINDS:  # narrows kind to ProvisionKind
        raise table.error("kind", f'expected one of "softhsm2", "nss", got {kind!r}')
    directory = table.required_path(
        "directory", "a directory path (SoftHSM2 token store or NSS database)"
    )
    so_pin_env = table.optional_str("so_pin_env")
    if so_pin_env is not None:
        if kind != "softhsm2":
            raise table.error("so_pin_env", 'only valid with kind = "softhsm2"')
        if not _ENV_NAME_RE.fullmatch(so_pin_env):
            raise table.error("so_pin_env", f"expected an environment variable name, got {so_pin_env!r}")
    table.finish()
    return ProvisionConfig(kind=kind, directory=directory, so_pin_env=so_pin_env)


def _parse_module(table: _Table) -> str:
    module = table.required_str("module", "the path of the PKCS#11 module (.so)")
    if "/" not in module:
        # A bare soname ("libsoftokn3.so") is left to the dynamic loader's search path.
        return module
    path = table.resolve_path(module)
    if not path.is_file():
        raise table.error("module", f"{path} does not exist; expected the path of a PKCS#11 module (.so)")
    return str(path)


def _check_field_length(table: _Table, name: str, value: str | None, limit: int) -> None:
    if value is not None and len(value.encode("utf-8")) > limit:
        raise table.error(name, f"expected at most {limit} bytes (PKCS#11 token info field)")


def _parse_token(table: _Table) -> TokenConfig:
    name = table.required_str("name", "the name the gateway uses for this token")
    if not _NAME_RE.fullmatch(name):
        raise table.error(
            "name", f"expected 1-64 letters, digits, '.', '_' or '-' (starting alphanumeric), got {name!r}"
        )
    module = _parse_module(table)
    label = table.optional_str("label")
    serial = table.optional_str("serial")
    if label is None and serial is None:
        raise table.error("label", f"missing; set {table.key('label')} or {table.key('serial')} "
                                   "to select the token among the module's slots")
    _check_field_length(table, "label", label, MAX_LABEL_BYTES)
    _check_field_length(table, "serial", serial, MAX_SERIAL_BYTES)
    pin = _parse_pin(table)
    init_args = table.optional_str("init_args")
    sessions = table.integer("sessions", DEFAULT_SESSIONS, 1, MAX_SESSIONS)
    object_writes = table.choice("object_writes", "one-process", ("one-process", "every-process"))

    environment = table.string_map("environment", _ENV_NAME_RE, "an environment variable name")
    for var, value in environment.items():
        if "/" in value:
            environment[var] = str(table.resolve_path(value))

    provision_table = table.subtable("provision")
    provision = None if provision_table is None else _parse_provision(provision_table)
    table.finish()

    if init_args is not None and DIRECTORY_PLACEHOLDER in init_args:
        if provision is None:
            raise table.error("init_args", f"uses {DIRECTORY_PLACEHOLDER} but "
                                           f"{table.key('provision.directory')} is not set")
        if "'" in str(provision.directory):
            raise table.error("provision.directory", "must not contain a single quote "
                                                     "(it is quoted inside init_args)")
        init_args = init_args.replace(DIRECTORY_PLACEHOLDER, str(provision.directory))

    if provision is not None and provision.kind == "softhsm2":
        if label is None:
            raise table.error("label", 'missing; required with provision.kind = "softhsm2" '
                                       "(the token is created with this label)")
        # SoftHSM2 finds its tokens through SOFTHSM2_CONF: default it to the file
        # provisioning writes, and refuse one that points elsewhere.
        conf = str(provision.softhsm2_conf)
        configured = environment.setdefault("SOFTHSM2_CONF", conf)
        if configured != conf:
            raise table.error("environment.SOFTHSM2_CONF", f"is {configured}, expected {conf} "
                                                           f"(written for {table.key('provision.directory')})")
    if provision is not None and provision.kind == "nss" and init_args is None:
        raise table.error("init_args", "missing; NSS softoken needs its database in init_args, e.g. "
                                       f'"{_NSS_INIT_ARGS_EXAMPLE}"')

    return TokenConfig(
        key=table.path,
        name=name,
        module=module,
        label=label,
        serial=serial,
        pin=pin,
        init_args=init_args,
        environment=MappingProxyType(environment),
        sessions=sessions,
        provision=provision,
        object_writes=object_writes,
    )


def _check_tokens_together(tokens: list[TokenConfig]) -> None:
    """Rules that span tokens: unique names, one environment and one init per process."""
    names: dict[str, str] = {}
    env_owner: dict[str, tuple[str, str]] = {}  # variable -> (value, token key)
    module_owner: dict[str, TokenConfig] = {}
    for t in tokens:
        if t.name in names:
            raise ConfigError(f"{t.key}.name: {t.name!r} is already used by {names[t.name]}; "
                              "expected a unique name")
        names[t.name] = t.key
        # The environment is process-wide and read at C_Initialize: it cannot differ per token.
        for var, value in t.environment.items():
            seen = env_owner.setdefault(var, (value, t.key))
            if seen[0] != value:
                raise ConfigError(
                    f"{t.key}.environment.{var}: differs from {seen[1]}.environment.{var}; "
                    "expected the same value (environment variables are process-wide)"
                )
        # Each module is initialised once per process, with one init_args.
        first = module_owner.setdefault(t.module, t)
        if first.init_args != t.init_args:
            raise ConfigError(
                f"{t.key}.init_args: differs from {first.key}.init_args for the same module; "
                "expected the same value (a PKCS#11 module is initialised once per process)"
            )


def _parse_tokens(root: _Table) -> tuple[TokenConfig, ...]:
    tables = root.array_of_tables("tokens")
    if not tables:
        raise root.error("tokens", "missing; expected at least one [[tokens]] table")
    tokens = [_parse_token(t) for t in tables]
    _check_tokens_together(tokens)
    return tuple(tokens)


def _parse_issuers(table: _Table, name: str) -> tuple[IssuerConfig, ...]:
    """``[[<section>.issuers]]``: reusable by any section that trusts JWT issuers."""
    issuers: list[IssuerConfig] = []
    for entry in table.array_of_tables(name):
        issuer_name = entry.required_str("name", "the issuer's name")
        if not _NAME_RE.fullmatch(issuer_name):
            raise entry.error("name", f"expected 1-64 letters, digits, '.', '_' or '-', got {issuer_name!r}")
        if any(i.name == issuer_name for i in issuers):
            raise entry.error("name", f"{issuer_name!r} is used twice; expected a unique name")
        keys, jwks = entry.optional_path("keys"), entry.optional_path("jwks")
        if (keys is None) == (jwks is None):
            raise entry.error("keys", f"set exactly one of {entry.key('keys')} (PEM public keys) "
                                      f"and {entry.key('jwks')} (JWKS file)")
        iss, aud = entry.optional_str("iss"), entry.optional_str("aud")
        entry.finish()
        issuers.append(IssuerConfig(key=entry.path, name=issuer_name, keys=keys, jwks=jwks, iss=iss, aud=aud))
    return tuple(issuers)


def _parse_vault(table: _Table | None) -> VaultConfig:
    if table is None:
        return VaultConfig()
    issuers = _parse_issuers(table, "issuers")
    dev_issuer_key = table.optional_path("dev_issuer_key")
    if dev_issuer_key is not None and dev_issuer_key.suffix == ".pub":
        raise table.error("dev_issuer_key", "must not end in .pub (its public half is written there)")
    allow = table._get("allow_secret_import")
    if allow is not None and not isinstance(allow, bool):
        raise table.error("allow_secret_import", f"expected a boolean, got {_describe(allow)}")
    table.finish()
    return VaultConfig(issuers=issuers, dev_issuer_key=dev_issuer_key, allow_secret_import=bool(allow))


def _bool(table: _Table, name: str, default: bool) -> bool:
    value = table._get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise table.error(name, f"expected true or false, got {_describe(value)}")
    return value


def _parse_hem_users(table: _Table) -> tuple[HemUserConfig, ...]:
    users: list[HemUserConfig] = []
    for entry in table.array_of_tables("users"):
        name = entry.required_str("name", "the user's name")
        pubkey_text = entry.required_str("pubkey", "the user's X25519 public key in base64 (`gateway hem-user add`)")
        try:
            pubkey = base64.b64decode(pubkey_text, validate=True)
        except (binascii.Error, ValueError):
            raise entry.error("pubkey", "not valid base64") from None
        if len(pubkey) != 32:
            raise entry.error("pubkey", f"an X25519 public key is 32 bytes, got {len(pubkey)}")
        role = entry.optional_str("role") or "U"
        if role not in ("U", "M"):
            raise entry.error("role", f'expected "U" (user) or "M" (master), got {role!r}')
        entry.finish()
        users.append(HemUserConfig(name, pubkey, role))
    return tuple(users)


def _parse_hem(table: _Table | None, tokens: tuple[TokenConfig, ...]) -> HemConfig | None:
    if table is None:
        return None
    token = table.optional_str("token")
    if token is not None and token not in [t.name for t in tokens]:
        raise table.error("token", f"no token named {token!r}; expected one of {', '.join(t.name for t in tokens)}")
    recipe = table.optional_str("derive_recipe") or "auto"
    if recipe not in HEM_RECIPES:  # narrows to HemRecipe
        raise table.error("derive_recipe", f'expected "auto", "raw" or "hkdf-sha256", got {recipe!r}')
    label = table.optional_str("label") or "pkcs11-gateway"
    if len(label) > 64:
        raise table.error("label", "expected at most 64 characters")
    config = HemConfig(
        eid=table.optional_str("eid"),
        label=label,
        token=token,
        derive_recipe=recipe,
        users=_parse_hem_users(table),
        users_file=table.optional_path("users_file"),
        dev_user=table.optional_str("dev_user"),
        bearer_max_lifetime=table.integer("bearer_max_lifetime", 28800, 60, 30 * 24 * 3600),
        failed_login_delay_ms=table.integer("failed_login_delay_ms", 500, 0, 60000),
        allow_asymmetric_derive=_bool(table, "allow_asymmetric_derive", False),
        external_issuers=_parse_issuers(table, "external_issuers"),
    )
    if config.dev_user is not None and config.users_file is None:
        raise table.error("dev_user", f"needs {table.key('users_file')} (where `gateway tokens init` writes the user)")
    table.finish()
    return config


def _parse_audit(table: _Table | None, state_dir: Path, tokens: tuple[TokenConfig, ...]) -> AuditConfig:
    if table is None:
        return AuditConfig(directory=state_dir / "audit")
    path = table.optional_str("path")
    directory = state_dir / "audit" if path is None else Path(os.path.normpath(state_dir / path))
    token = table.optional_str("token")
    if token is not None and token not in [t.name for t in tokens]:
        raise table.error("token", f"no token named {token!r}; expected one of {', '.join(t.name for t in tokens)}")
    segment_bytes = table.integer("segment_bytes", 1 << 20, 4096, 1 << 30)
    table.finish()
    return AuditConfig(directory=directory, token=token, segment_bytes=segment_bytes)


# --------------------------------------------------------------------------- entry point


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at ``path``; raise ConfigError on any problem."""
    file = Path(os.path.abspath(path))
    root = _Table(_read_toml(file), "", file.parent)
    state_dir = root.optional_path("state_dir") or file.parent / "state"
    server_table = root.subtable("server") or _Table({}, "server", file.parent)
    server = _parse_server(server_table)
    tokens = _parse_tokens(root)
    vault = _parse_vault(root.subtable("vault"))
    hem = _parse_hem(root.subtable("hem"), tokens)
    audit = _parse_audit(root.subtable("audit"), state_dir, tokens)
    logging_config = _parse_logging(root.subtable("logging"))
    root.finish()
    return Config(path=file, state_dir=state_dir, server=server, tokens=tokens, vault=vault, hem=hem, audit=audit,
                  logging=logging_config)
