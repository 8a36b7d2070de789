"""The service side of the `gateway` command: dev TLS made once by `tokens init`, `keys list`
on a real token, exit codes scripts can rely on, and --help that documents them."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from gateway.cli import EXIT_TOKEN_UNAVAILABLE, EXIT_USAGE
from gateway.token import Curve, SecretSpec, SecretType, TokenSet, Usage
from tests.conftest import SoftHSMSettingsFactory
from tests.tokens import SOFTHSM_MODULE


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_help_documents_commands_and_exit_codes() -> None:
    top = gateway("--help")
    assert top.returncode == 0
    for word in ("serve", "tokens", "capabilities", "keys", "Exit codes: 0 ok; 1 failure; 2 usage or "
                 "configuration error; 3 a token is unavailable"):
        assert word in " ".join(top.stdout.split()), word
    serve = gateway("serve", "--help")
    assert "--workers N" in serve.stdout and "shutdown_timeout" in serve.stdout and "Exit codes" in serve.stdout
    keys = gateway("keys", "list", "--help")
    assert "--json" in keys.stdout and "No key material is read" in " ".join(keys.stdout.split())
    assert gateway("serve", "--workers", "0").returncode == EXIT_USAGE
    assert gateway("keys").returncode == EXIT_USAGE  # a subcommand is required


def _tls_config(tmp_path: Path, cert: str, key: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""\
state_dir = "state"
[server]
tls_cert = "{cert}"
tls_key = "{key}"
[[tokens]]
name = "t"
module = "{SOFTHSM_MODULE}"
label = "service"
pin = "1234"
""")
    return path


def test_tokens_init_makes_the_dev_ca_once_and_reuses_it(tmp_path: Path) -> None:
    config = _tls_config(tmp_path, "state/tls/server.crt", "state/tls/server.key")
    tls = tmp_path / "state" / "tls"
    first = gateway("tokens", "init", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert f"tls: development CA created at {tls / 'ca.crt'}" in first.stdout
    assert f"curl --cacert {tls / 'ca.crt'} https://127.0.0.1:8443/readyz" in first.stdout
    assert (tls / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tls / "server.key").stat().st_mode & 0o777 == 0o600
    ca_before = (tls / "ca.crt").read_bytes()
    cert_before = (tls / "server.crt").read_bytes()

    ca = x509.load_pem_x509_certificate(ca_before)
    cert = x509.load_pem_x509_certificate(cert_before)
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    again = gateway("tokens", "init", "--config", str(config))
    assert again.returncode == 0 and "development CA kept" in again.stdout and "certificate kept" in again.stdout
    assert (tls / "ca.crt").read_bytes() == ca_before and (tls / "server.crt").read_bytes() == cert_before

    (tls / "server.crt").unlink()  # a lost server certificate is re-issued by the same CA
    third = gateway("tokens", "init", "--config", str(config))
    assert "certificate issued" in third.stdout and (tls / "ca.crt").read_bytes() == ca_before
    x509.load_pem_x509_certificate((tls / "server.crt").read_bytes()).verify_directly_issued_by(ca)


def test_tokens_init_leaves_operator_certificates_alone(tmp_path: Path) -> None:
    config = _tls_config(tmp_path, "/etc/pki/gateway.crt", "/etc/pki/gateway.key")
    result = gateway("tokens", "init", "--config", str(config))
    assert result.returncode == 0 and "tls:" not in result.stdout
    assert not (tmp_path / "state" / "tls").exists()


def _keys_config(tmp_path: Path, softhsm_dir: Path, label: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(f"""\
[[tokens]]
name = "spare"
module = "{SOFTHSM_MODULE}"
label = "{label}"
pin_env = "KEYS_TEST_PIN"
[tokens.environment]
SOFTHSM2_CONF = "{softhsm_dir / 'softhsm2.conf'}"
""")
    return path


def test_keys_list_shows_every_key_of_the_token(tmp_path: Path, softhsm_dir: Path,
                                                softhsm_settings: SoftHSMSettingsFactory) -> None:
    tokens = TokenSet.open([softhsm_settings("spare1", sessions=1)])
    try:
        token = tokens["spare1"]
        pair = token.generate_keypair(os.urandom(16), '{"svc":"pair"}', Curve.P256, Usage(derive=True))
        secret = token.generate_secret(SecretSpec(os.urandom(16), "svc-secret", SecretType.AES, 32, Usage(encrypt=True)))
        expected = {(info.kid.hex(), info.label) for info in token.list_keys()}
    finally:
        tokens.close()
    env = {**os.environ, "KEYS_TEST_PIN": "1234"}
    config = _keys_config(tmp_path, softhsm_dir, "spare1")

    table = gateway("keys", "list", "--config", str(config), env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["token", "kid", "class", "type", "label"]
    # a key pair is one row (the adapter merges the public half into the private key's entry)
    assert any(line.split()[:4] == ["spare", pair.kid.hex(), "private", "P-256"] for line in lines)
    assert any(line.split()[:5] == ["spare", secret.kid.hex(), "secret", "AES-256", "svc-secret"] for line in lines)

    rows = [json.loads(line) for line in gateway("keys", "list", "--json", "--config", str(config), env=env).stdout.splitlines()]
    assert {(r["kid"], r["label"]) for r in rows} == expected
    assert {r["token"] for r in rows} == {"spare"}
    assert "1234" not in table.stdout + table.stderr


def test_capabilities_prints_what_the_adapter_detected(tmp_path: Path, softhsm_dir: Path,
                                                      softhsm_settings: SoftHSMSettingsFactory) -> None:
    tokens = TokenSet.open([softhsm_settings("spare2", sessions=1)])
    try:
        rows = tokens["spare2"].capabilities.rows()
    finally:
        tokens.close()
    env = {**os.environ, "KEYS_TEST_PIN": "1234"}

    result = gateway("capabilities", "--config", str(_keys_config(tmp_path, softhsm_dir, "spare2")), env=env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "spare" and lines[1].split() == ["feature", "value"]
    printed = {line[2:].split("  ", 1)[0].strip(): line[2:].split("  ", 1)[1].strip() for line in lines[3:] if line.strip()}
    assert printed == dict(rows)
    # SoftHSM2 2.6: ECDH without KDFs, no HKDF (docs: ../shared/notes/pkcs11-tokens.md)
    assert "P-256" in printed["ECDH (CKM_ECDH1_DERIVE)"] and printed["HKDF (CKM_HKDF_DERIVE)"] == "no"
    assert "1234" not in result.stdout + result.stderr


def test_exit_codes(tmp_path: Path, softhsm_dir: Path) -> None:
    env = {**os.environ, "KEYS_TEST_PIN": "1234"}
    missing_token = gateway("keys", "list", "--config", str(_keys_config(tmp_path, softhsm_dir, "no-such-token")), env=env)
    assert missing_token.returncode == EXIT_TOKEN_UNAVAILABLE
    assert missing_token.stderr.startswith("gateway: token unavailable:") and "Traceback" not in missing_token.stderr

    no_pin = gateway("keys", "list", "--config", str(_keys_config(tmp_path, softhsm_dir, "spare1")),
                     env={k: v for k, v in os.environ.items() if k != "KEYS_TEST_PIN"})
    assert no_pin.returncode == EXIT_USAGE and "tokens[0].pin_env" in no_pin.stderr

    unknown = gateway("keys", "list", "--token", "nope", "--config", str(_keys_config(tmp_path, softhsm_dir, "spare1")),
                      env=env)
    assert unknown.returncode == EXIT_USAGE and "--token: no token named 'nope'" in unknown.stderr
    assert gateway("capabilities", "--config", str(tmp_path / "missing.toml")).returncode == EXIT_USAGE
