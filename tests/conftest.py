"""Real token fixtures: SoftHSM2 tokens and an NSS database, created fresh per session.

No mocks: every test that needs a token gets a real one.  Tokens are created
with ``gateway.provision`` (child processes), before any PKCS#11 module is
loaded in this process, because SoftHSM2 scans its token directory only at
``C_Initialize``, each module is initialised once per process, and NSS
softoken opens one database per process.  Hence session scope throughout,
one shared ``SOFTHSM2_CONF`` and a fixed set of pre-made labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from gateway.provision import ensure_nss_db, ensure_softhsm_token
from tests.tokens import (
    NSS_INIT_ARGS,
    NSS_LABEL,
    NSS_MODULE,
    NSS_PASSWORD,
    SOFTHSM_LABELS,
    SOFTHSM_MODULE,
    SOFTHSM_PIN,
    SOFTHSM_SO_PIN,
)

if TYPE_CHECKING:
    from gateway.token.settings import TokenSettings


class SoftHSMSettingsFactory(Protocol):
    """Type of the ``softhsm_settings`` fixture."""

    def __call__(self, label: str, name: str | None = None, sessions: int = 4) -> TokenSettings: ...


def _require_module(path: str, package: str) -> None:
    if not os.path.isfile(path):
        pytest.fail(f"PKCS#11 module {path} not found: install the {package} package "
                    "(`make test` does)", pytrace=False)


def _module_loaded(path: str) -> bool:
    """Whether this process has already mapped the shared object at ``path``."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any(line.rstrip().endswith(real) for line in maps)
    except OSError:
        return False


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SoftHSM2 token directory holding the tokens named in ``SOFTHSM_LABELS``.

    User PIN ``1234``, SO PIN ``5678``.  ``SOFTHSM2_CONF`` points at it for the
    rest of the session.
    """
    _require_module(SOFTHSM_MODULE, "softhsm2")
    if _module_loaded(SOFTHSM_MODULE):
        pytest.fail("SoftHSM2 was loaded before the test tokens were created; it would not "
                    "see them (request softhsm_dir before loading the module)", pytrace=False)
    directory = tmp_path_factory.mktemp("softhsm")
    conf = directory / "softhsm2.conf"
    for label in SOFTHSM_LABELS:
        conf = ensure_softhsm_token(directory, label, SOFTHSM_PIN, SOFTHSM_SO_PIN)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield directory
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def softhsm_settings(softhsm_dir: Path) -> SoftHSMSettingsFactory:
    """Factory: ``softhsm_settings(label, name=None, sessions=4) -> TokenSettings``.

    ``label`` must be one of ``SOFTHSM_LABELS`` (tokens cannot be added once
    SoftHSM2 is loaded); ``name`` defaults to the label.
    """
    # Lazy: gateway.token is imported only by tests that use tokens.
    from gateway.token.settings import TokenSettings

    conf = str(softhsm_dir / "softhsm2.conf")

    def make(label: str, name: str | None = None, sessions: int = 4) -> TokenSettings:
        if label not in SOFTHSM_LABELS:
            raise ValueError(f"no SoftHSM2 test token {label!r}; use one of {SOFTHSM_LABELS}")
        return TokenSettings(
            name=name or label,
            module=SOFTHSM_MODULE,
            label=label,
            pin=SOFTHSM_PIN,
            environment={"SOFTHSM2_CONF": conf},
            sessions=sessions,
        )

    return make


@pytest.fixture(scope="session")
def nss_settings(tmp_path_factory: pytest.TempPathFactory) -> TokenSettings:
    """A fresh NSS softoken database (password ``nsspin-1234``), token "NSS Certificate DB"."""
    from gateway.token.settings import TokenSettings

    _require_module(NSS_MODULE, "libnss3")
    directory = tmp_path_factory.mktemp("nss")
    ensure_nss_db(directory, NSS_PASSWORD)
    return TokenSettings(
        name="nss",
        module=NSS_MODULE,
        label=NSS_LABEL,
        pin=NSS_PASSWORD,
        init_args=NSS_INIT_ARGS.replace("{directory}", str(directory)),
    )


from tests.token_fixtures import *  # noqa: E402,F401,F403  (adapter token fixtures)

# Checks every request the suite makes through aiohttp test clients against
# gateway/http/openapi.json at the end of the run (see the module).
pytest_plugins = ("tests.openapi_traffic",)
