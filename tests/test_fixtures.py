"""The real-token fixtures of conftest.py deliver what they promise (no adapter used)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.provision import softhsm_labels
from gateway.token.settings import TokenSettings
from tests.conftest import SoftHSMSettingsFactory
from tests.tokens import NSS_MODULE, SOFTHSM_LABELS, SOFTHSM_MODULE


def test_softhsm_dir_holds_every_label(softhsm_dir: Path) -> None:
    conf = softhsm_dir / "softhsm2.conf"
    assert os.environ["SOFTHSM2_CONF"] == str(conf)
    assert sorted(softhsm_labels(conf)) == sorted(SOFTHSM_LABELS)


def test_softhsm_settings_factory(softhsm_settings: SoftHSMSettingsFactory, softhsm_dir: Path) -> None:
    s = softhsm_settings("lookup")
    assert isinstance(s, TokenSettings)
    assert (s.name, s.label, s.pin, s.sessions, s.module) == ("lookup", "lookup", "1234", 4, SOFTHSM_MODULE)
    assert s.environment == {"SOFTHSM2_CONF": str(softhsm_dir / "softhsm2.conf")}
    assert softhsm_settings("spare1", name="other", sessions=2).name == "other"
    with pytest.raises(ValueError, match="no SoftHSM2 test token"):
        softhsm_settings("not-created")


def test_nss_settings(nss_settings: TokenSettings) -> None:
    assert nss_settings.module == NSS_MODULE and nss_settings.label == "NSS Certificate DB"
    assert nss_settings.pin == "nsspin-1234"
    assert nss_settings.init_args is not None
    directory = nss_settings.init_args.split("configdir='sql:")[1].split("'")[0]
    assert (Path(directory) / "cert9.db").is_file()
