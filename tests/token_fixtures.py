"""Opened adapter tokens for the token-layer tests (one per purpose, session scope).

Each purpose gets its own fresh SoftHSM2 token so that, say, the 2,000 keys
of the lookup test do not slow the other tests' listings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gateway.token import Token
    from gateway.token.settings import TokenSettings


def _open(settings: "TokenSettings") -> "Iterator[Token]":
    from gateway.token import Token

    token = Token(settings)
    yield token
    token.close()


@pytest.fixture(scope="session")
def softhsm_token(softhsm_settings) -> "Iterator[Token]":  # type: ignore[no-untyped-def]
    yield from _open(softhsm_settings("adapter", name="softhsm"))


@pytest.fixture(scope="session")
def softhsm_concurrency_token(softhsm_settings) -> "Iterator[Token]":  # type: ignore[no-untyped-def]
    yield from _open(softhsm_settings("concurrency", sessions=8))


@pytest.fixture(scope="session")
def softhsm_lookup_token(softhsm_settings) -> "Iterator[Token]":  # type: ignore[no-untyped-def]
    yield from _open(softhsm_settings("lookup"))


@pytest.fixture(scope="session")
def softhsm_recovery_token(softhsm_settings) -> "Iterator[Token]":  # type: ignore[no-untyped-def]
    yield from _open(softhsm_settings("recovery"))


@pytest.fixture(scope="session")
def softhsm_spare_token(softhsm_settings) -> "Iterator[Token]":  # type: ignore[no-untyped-def]
    yield from _open(softhsm_settings("spare2"))


@pytest.fixture(scope="session")
def nss_token(nss_settings: "TokenSettings") -> "Iterator[Token]":
    yield from _open(nss_settings)


@pytest.fixture(params=["softhsm", "nss"])
def token(request: pytest.FixtureRequest) -> "Token":
    """Runs a test once on SoftHSM2 and once on NSS softoken."""
    return request.getfixturevalue(f"{request.param}_token")
