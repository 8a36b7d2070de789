"""The [vault] config section: issuers, dev issuer key, the secret-import flag."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import VaultConfig, load_config
from gateway.errors import ConfigError
from tests.tokens import SOFTHSM_MODULE

REPO = Path(__file__).resolve().parent.parent
TOKEN = f"""\
[[tokens]]
name = "t"
module = "{SOFTHSM_MODULE}"
label = "x"
pin_env = "P"
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "gateway.toml"
    path.write_text(TOKEN + textwrap.dedent(text))
    return load_config(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.message


def test_absent_section_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").vault == VaultConfig()
    assert VaultConfig().allow_secret_import is False


def test_full_section(tmp_path: Path) -> None:
    config = load(tmp_path, """\
        [vault]
        dev_issuer_key = "state/dev-issuer.key"
        allow_secret_import = true
        [[vault.issuers]]
        name = "dev"
        keys = "state/dev-issuer.pub"
        iss = "gateway-dev"
        [[vault.issuers]]
        name = "ident"
        jwks = "/etc/gateway/ident-jwks.json"
        aud = "vault"
        """)
    vault = config.vault
    assert vault.dev_issuer_key == tmp_path / "state" / "dev-issuer.key"
    assert vault.allow_secret_import is True
    dev, ident = vault.issuers
    assert (dev.key, dev.name, dev.keys, dev.jwks, dev.iss, dev.aud) == (
        "vault.issuers[0]", "dev", tmp_path / "state" / "dev-issuer.pub", None, "gateway-dev", None)
    assert (ident.jwks, ident.keys, ident.aud) == (Path("/etc/gateway/ident-jwks.json"), None, "vault")


def test_inline_issuer_array(tmp_path: Path) -> None:
    config = load(tmp_path, """\
        [vault]
        issuers = [{name = "a", keys = "a.pem"}]
        """)
    assert config.vault.issuers[0].keys == tmp_path / "a.pem"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[vault]\nallow_secret_import = \"yes\"\n", "vault.allow_secret_import: expected a boolean"),
        ("[vault]\nissuer = []\n", "vault.issuer: unknown key (did you mean 'issuers'?)"),
        ("[[vault.issuers]]\nname = \"a\"\n", "vault.issuers[0].keys: set exactly one of"),
        ("[[vault.issuers]]\nname = \"a\"\nkeys = \"a\"\njwks = \"b\"\n", "set exactly one of"),
        ("[[vault.issuers]]\nkeys = \"a\"\n", "vault.issuers[0].name: missing"),
        ("[[vault.issuers]]\nname = \"a\"\nkeys = \"a\"\n[[vault.issuers]]\nname = \"a\"\nkeys = \"b\"\n",
         "vault.issuers[1].name: 'a' is used twice"),
        ("[[vault.issuers]]\nname = \"a\"\nkeys = \"a\"\nalg = \"HS256\"\n", "vault.issuers[0].alg: unknown key"),
        ("[vault]\ndev_issuer_key = \"k.pub\"\n", "vault.dev_issuer_key: must not end in .pub"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, text)


def test_dev_config_trusts_its_own_dev_issuer() -> None:
    config = load_config(REPO / "config" / "dev.toml")
    vault = config.vault
    assert vault.dev_issuer_key == REPO / "state" / "vault" / "dev-issuer.key"
    assert [(i.name, i.keys) for i in vault.issuers] == [("dev", REPO / "state" / "vault" / "dev-issuer.pub")]
    assert vault.allow_secret_import is False
    # ChaCha20 keys need NSS softoken; AES and the curves SoftHSM2: both are configured.
    assert config.token_names == ["softhsm", "nss"]
