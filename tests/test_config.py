"""gateway.config: the dev config loads, and every error names the key at fault."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from tests.tokens import NSS_MODULE, SOFTHSM_MODULE

REPO = Path(__file__).resolve().parent.parent
SECRET_PIN = "s3cret-PIN-never-printed"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def token(**overrides: str) -> str:
    """One [[tokens]] table; values are TOML literals, None-like "" drops a key."""
    keys = {
        "name": '"softhsm"',
        "module": f'"{SOFTHSM_MODULE}"',
        "label": '"gateway-dev"',
        "pin_env": '"TEST_GATEWAY_PIN"',
    }
    keys.update(overrides)
    body = "\n".join(f"{k} = {v}" for k, v in keys.items() if v)
    return f"[[tokens]]\n{body}\n"


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.message


# --------------------------------------------------------------------------- valid


def test_dev_config_loads() -> None:
    config = load_config(REPO / "config" / "dev.toml")
    assert isinstance(config, Config)
    assert config.state_dir == REPO / "state"
    assert (config.server.host, config.server.port, config.server.tls) == ("127.0.0.1", 8443, True)
    # the dev CA's files, made by `gateway tokens init` (gateway.tls)
    assert config.server.tls_cert == REPO / "state" / "tls" / "server.crt"
    assert config.server.tls_key == REPO / "state" / "tls" / "server.key"
    assert config.token_names == ["softhsm", "nss"]

    softhsm = config.token("softhsm")
    assert softhsm.label == "gateway-dev"
    assert softhsm.pin.file == REPO / "state" / "softhsm" / "user.pin"
    assert softhsm.environment["SOFTHSM2_CONF"] == str(REPO / "state" / "softhsm" / "softhsm2.conf")
    assert softhsm.provision is not None and softhsm.provision.kind == "softhsm2"
    assert softhsm.provision.directory == REPO / "state" / "softhsm"

    nss = config.token("nss")
    assert nss.label == "NSS Certificate DB"
    assert nss.init_args is not None
    assert f"configdir='sql:{REPO / 'state' / 'nss'}'" in nss.init_args
    assert "{directory}" not in nss.init_args
    assert nss.provision is not None and nss.provision.kind == "nss"


def test_defaults_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pins").mkdir()
    (tmp_path / "pins" / "user.pin").write_text(SECRET_PIN + "\n")
    path = write(tmp_path, token(pin_env="", pin_file='"pins/user.pin"')
                 + '[tokens.environment]\nSOME_CONF = "conf/x.conf"\nPLAIN = "value"\n')
    monkeypatch.chdir("/")  # resolution must not depend on the working directory
    config = load_config(path)
    assert config.server.listen == "127.0.0.1:8443"
    assert config.state_dir == tmp_path / "state"
    t = config.tokens[0]
    assert t.sessions == 4
    assert t.pin.file == tmp_path / "pins" / "user.pin"
    assert dict(t.environment) == {"SOME_CONF": str(tmp_path / "conf" / "x.conf"), "PLAIN": "value"}
    settings = config.token_settings()[0]
    assert settings.pin == SECRET_PIN  # first line, newline stripped
    assert settings.module == SOFTHSM_MODULE and settings.label == "gateway-dev"


def test_ipv6_listen_and_tls(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[server]\nlisten = "[::1]:9443"\n'
                                         'tls_cert = "tls/c.pem"\ntls_key = "tls/k.pem"\n' + token()))
    assert (config.server.host, config.server.port) == ("::1", 9443)
    assert config.server.listen == "[::1]:9443"
    assert config.server.tls_cert == tmp_path / "tls" / "c.pem"


def test_pin_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GATEWAY_PIN", SECRET_PIN)
    settings = load_config(write(tmp_path, token())).token_settings()
    assert settings[0].pin == SECRET_PIN


# --------------------------------------------------------------------------- errors name the key


def test_missing_module(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(module=""))
    assert message.startswith("tokens[0].module: missing")
    assert "PKCS#11 module" in message


def test_module_path_that_does_not_exist(tmp_path: Path) -> None:
    message = error_of(tmp_path, token() + token(name='"b"', module='"/nonexistent/lib.so"'))
    assert message.startswith("tokens[1].module: /nonexistent/lib.so does not exist")


def test_pin_and_pin_env_together(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(pin=f'"{SECRET_PIN}"'))
    assert message.startswith("tokens[0].pin: set exactly one of")
    assert "tokens[0].pin_env" in message and "found pin and pin_env" in message
    assert SECRET_PIN not in message


def test_no_pin_at_all(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(pin_env=""))
    assert "tokens[0].pin_file" in message and "found none" in message


@pytest.mark.parametrize("listen", ["8443", "localhost", "127.0.0.1:0", "127.0.0.1:70000",
                                    "[not-ipv6]:1", "a b:80", ":8443"])
def test_bad_listen(tmp_path: Path, listen: str) -> None:
    message = error_of(tmp_path, f'[server]\nlisten = "{listen}"\n' + token())
    assert message.startswith("server.listen: expected \"host:port\"")


def test_listen_wrong_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[server]\nlisten = 8443\n" + token())
    assert message == "server.listen: expected a string, got an integer"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[hem]\nx = 1\n", "hem.x: unknown key"),  # [hem] exists now (issue 3)
        ("[vault]\nx = 1\n", "vault.x: unknown key"),  # [vault] exists now (issue 4)
        ("[server]\nlisten = \"127.0.0.1:1\"\nport = 1\n", "server.port: unknown key"),
    ],
)
def test_unknown_top_level_and_server_keys(tmp_path: Path, text: str, key: str) -> None:
    message = error_of(tmp_path, text + token())
    assert message.startswith(key)
    assert "expected one of:" in message


def test_unknown_token_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(sesions="4"))
    assert message.startswith("tokens[0].sesions: unknown key (did you mean 'sessions'?)")


def test_unknown_provision_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, token() + '[tokens.provision]\nkind = "softhsm2"\ndirectory = "d"\n'
                                           'size = 3\n')
    assert message.startswith("tokens[0].provision.size: unknown key")


@pytest.mark.parametrize(("value", "detail"), [("0", "got 0"), ("2000", "got 2000"),
                                               ('"4"', "got a string"), ("true", "got a boolean"),
                                               ("1.5", "got a float")])
def test_bad_sessions(tmp_path: Path, value: str, detail: str) -> None:
    message = error_of(tmp_path, token(sessions=value))
    assert message.startswith("tokens[0].sessions: expected an integer from 1 to 1024")
    assert message.endswith(detail)


def test_object_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GATEWAY_PIN", SECRET_PIN)
    assert load_config(write(tmp_path, token())).token_settings()[0].object_writes == "one-process"
    own = load_config(write(tmp_path, token(object_writes='"every-process"')))
    assert own.token_settings()[0].object_writes == "every-process"
    message = error_of(tmp_path, token(object_writes='"sometimes"'))
    assert message == 'tokens[0].object_writes: expected one of "one-process", "every-process", got \'sometimes\''


def test_second_token_is_named_by_index(tmp_path: Path) -> None:
    message = error_of(tmp_path, token() + token(name='"other"', label="", serial="", ))
    assert message.startswith("tokens[1].label: missing; set tokens[1].label or tokens[1].serial")


def test_duplicate_token_names(tmp_path: Path) -> None:
    message = error_of(tmp_path, token() + token(label='"x"'))
    assert message.startswith("tokens[1].name: 'softhsm' is already used by tokens[0]")


def test_no_tokens(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\n").startswith("tokens: missing")


def test_bad_token_name(tmp_path: Path) -> None:
    assert error_of(tmp_path, token(name='"has space"')).startswith("tokens[0].name: expected")


def test_label_too_long(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(label='"' + "x" * 33 + '"'))
    assert message.startswith("tokens[0].label: expected at most 32 bytes")


def test_bad_provision_kind(tmp_path: Path) -> None:
    message = error_of(tmp_path, token() + '[tokens.provision]\nkind = "yubikey"\ndirectory = "d"\n')
    assert message.startswith('tokens[0].provision.kind: expected one of "softhsm2", "nss"')


def test_so_pin_env_only_for_softhsm2(tmp_path: Path) -> None:
    text = token(module=f'"{NSS_MODULE}"', init_args='"x"') + (
        '[tokens.provision]\nkind = "nss"\ndirectory = "d"\nso_pin_env = "SO"\n')
    assert error_of(tmp_path, text).startswith("tokens[0].provision.so_pin_env: only valid")


def test_nss_provision_requires_init_args(tmp_path: Path) -> None:
    text = token(module=f'"{NSS_MODULE}"') + '[tokens.provision]\nkind = "nss"\ndirectory = "d"\n'
    assert error_of(tmp_path, text).startswith("tokens[0].init_args: missing; NSS softoken")


def test_directory_placeholder_needs_provision(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(init_args="\"configdir='sql:{directory}'\""))
    assert message.startswith("tokens[0].init_args: uses {directory}")


def test_softhsm2_conf_must_match_provision_directory(tmp_path: Path) -> None:
    text = token() + ('[tokens.environment]\nSOFTHSM2_CONF = "elsewhere/softhsm2.conf"\n'
                      '[tokens.provision]\nkind = "softhsm2"\ndirectory = "hsm"\n')
    assert error_of(tmp_path, text).startswith("tokens[0].environment.SOFTHSM2_CONF: is ")


def test_softhsm2_conf_defaults_from_provision(tmp_path: Path) -> None:
    text = token() + '[tokens.provision]\nkind = "softhsm2"\ndirectory = "hsm"\n'
    config = load_config(write(tmp_path, text))
    assert config.tokens[0].environment["SOFTHSM2_CONF"] == str(tmp_path / "hsm" / "softhsm2.conf")


def test_environment_must_agree_across_tokens(tmp_path: Path) -> None:
    text = (token() + '[tokens.environment]\nSOFTHSM2_CONF = "/a/softhsm2.conf"\n'
            + token(name='"b"', label='"b"') + '[tokens.environment]\nSOFTHSM2_CONF = "/b/softhsm2.conf"\n')
    message = error_of(tmp_path, text)
    assert message.startswith("tokens[1].environment.SOFTHSM2_CONF: differs from tokens[0]")


def test_init_args_must_agree_for_one_module(tmp_path: Path) -> None:
    text = token(init_args='"a"') + token(name='"b"', label='"b"', init_args='"b"')
    assert error_of(tmp_path, text).startswith("tokens[1].init_args: differs from tokens[0].init_args")


def test_tls_key_without_cert(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\ntls_key = "k.pem"\n' + token())
    assert message.startswith("server.tls_cert: missing")


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(tmp_path, "this is = = not toml")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml")


# --------------------------------------------------------------------------- PIN secrecy


def test_pin_not_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, token(pin_env="", pin=f'"{SECRET_PIN}"')))
    settings = config.token_settings()
    assert settings[0].pin == SECRET_PIN
    for text in (repr(config), str(config), repr(config.tokens[0]), repr(config.tokens[0].pin),
                 repr(settings), str(settings[0])):
        assert SECRET_PIN not in text


def test_pin_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, token(pin_env="", pin="918273645"))
    assert message == "tokens[0].pin: expected a non-empty string, got an integer"
    assert "918273645" not in message


def test_missing_pin_env_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_GATEWAY_PIN", raising=False)
    config = load_config(write(tmp_path, token()))  # loading does not read PINs
    with pytest.raises(ConfigError, match=r"^tokens\[0\]\.pin_env: environment variable "
                                          r"TEST_GATEWAY_PIN is not set"):
        config.token_settings()


def test_missing_pin_file_names_the_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, token(pin_env="", pin_file='"nope.pin"')))
    with pytest.raises(ConfigError, match=r"^tokens\[0\]\.pin_file: .*nope\.pin does not exist"):
        config.token_settings()
