"""Service settings in the config ([server] limits and listeners, [logging]); the production
example loads; every error names the key and says what is expected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import DEFAULT_MAX_BODY_BYTES, load_config
from gateway.errors import ConfigError
from tests.tokens import SOFTHSM_MODULE

REPO = Path(__file__).resolve().parent.parent
TOKEN = f"""
[[tokens]]
name = "hsm"
module = "{SOFTHSM_MODULE}"
label = "service"
pin_env = "SERVICE_TEST_PIN"
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text) + TOKEN, encoding="utf-8")
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.message


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    server = config.server
    assert (server.host, server.port) == ("127.0.0.1", 8443)
    assert (server.workers, server.max_body_bytes, server.cpu_affinity) == (1, DEFAULT_MAX_BODY_BYTES, "auto")
    assert (server.request_timeout, server.readiness_timeout, server.shutdown_timeout) == (30.0, 5.0, 30.0)
    assert server.plain_listen is None
    assert (config.logging.level, config.logging.format) == ("info", "json")


def test_all_service_keys(tmp_path: Path) -> None:
    config = load(tmp_path, """
        [server]
        listen = "[::1]:9443"
        workers = 4
        cpu_affinity = "off"
        max_body_bytes = 4096
        request_timeout = 2.5
        readiness_timeout = 1
        shutdown_timeout = 0
        plain_listen = "127.0.0.1:9090"
        [logging]
        level = "debug"
        format = "text"
        """)
    server = config.server
    assert (server.host, server.port, server.workers, server.max_body_bytes) == ("::1", 9443, 4, 4096)
    assert server.cpu_affinity == "off"
    assert (server.request_timeout, server.readiness_timeout, server.shutdown_timeout) == (2.5, 1.0, 0.0)
    assert (server.plain_host, server.plain_port, server.plain_listen) == ("127.0.0.1", 9090, "127.0.0.1:9090")
    assert (config.logging.level, config.logging.format) == ("debug", "text")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nworkers = 0", "server.workers: expected an integer from 1 to 64, got 0"),
        ("[server]\nworkers = 65", "server.workers: expected an integer from 1 to 64, got 65"),
        ('[server]\nworkers = "2"', "server.workers: expected an integer from 1 to 64, got a string"),
        ('[server]\ncpu_affinity = "on"', 'server.cpu_affinity: expected one of "auto", "off", got \'on\''),
        ("[server]\nmax_body_bytes = 10", "server.max_body_bytes: expected an integer from 1024 to 1073741824, got 10"),
        ('[server]\nrequest_timeout = "30s"', "server.request_timeout: expected a number of seconds from 0.1 to 3600, got a string"),
        ("[server]\nrequest_timeout = 0", "server.request_timeout: expected a number of seconds from 0.1 to 3600, got 0"),
        ("[server]\nrequest_timeout = true", "server.request_timeout: expected a number of seconds from 0.1 to 3600, got a boolean"),
        ("[server]\nreadiness_timeout = 601", "server.readiness_timeout: expected a number of seconds from 0.1 to 600, got 601"),
        ("[server]\nshutdown_timeout = -1", "server.shutdown_timeout: expected a number of seconds from 0 to 3600, got -1"),
        ('[server]\nplain_listen = "9090"', 'server.plain_listen: expected "host:port" such as "127.0.0.1:8443" or "[::1]:8443", got \'9090\''),
        ('[server]\nlisten = "127.0.0.1:9000"\nplain_listen = "127.0.0.1:9000"',
         "server.plain_listen: is the same address as server.listen; expected a separate host:port for plain HTTP"),
        ('[logging]\nlevel = "verbose"', 'logging.level: expected one of "debug", "info", "warning", "error", got \'verbose\''),
        ("[logging]\nformat = 1", 'logging.format: expected one of "json", "text", got an integer'),
        ('[logging]\nformt = "json"', "logging.formt: unknown key (did you mean 'format'?); expected one of: format, level"),
        ('[server]\nworker = 2', "server.worker: unknown key (did you mean 'workers'?)"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).startswith(expected)


def test_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config/example.toml is a valid config once its placeholder module path names a real module."""
    text = (REPO / "config" / "example.toml").read_text(encoding="utf-8")
    placeholder = 'module = "/opt/vendor/lib/libvendor-pkcs11.so"'
    assert text.count(placeholder) == 1
    path = tmp_path / "example.toml"
    path.write_text(text.replace(placeholder, f'module = "{SOFTHSM_MODULE}"'), encoding="utf-8")
    config = load_config(path)
    assert config.server.tls and config.server.workers == 2 and config.server.plain_listen == "127.0.0.1:9090"
    assert config.tokens[0].pin.env == "GATEWAY_HSM1_PIN"  # the PIN is not in the file
    assert config.logging.format == "json"


def test_serve_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nrequest_timeout = \"soon\"\n" + TOKEN, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "server.request_timeout: expected a number of seconds" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_workers_fails_early_on_a_missing_pin(tmp_path: Path) -> None:
    """The supervisor checks the PINs before starting any worker (and before loading any module)."""
    path = tmp_path / "gateway.toml"
    path.write_text(TOKEN, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SERVICE_TEST_PIN"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--config", str(path)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "tokens[0].pin_env: environment variable SERVICE_TEST_PIN is not set" in result.stderr
