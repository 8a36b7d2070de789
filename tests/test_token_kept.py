"""A token that reports a new object created but did not keep it fails the call.

SoftHSM2 answers CKR_OK for a new token object whose file it could not write (its folder
turned read-only between creating the file and writing it); the object then lives in the
creating process only.  make stress caught one such key answered 200 and missing for every
other process.  The adapter reads the new handle back (Token._confirm_stored); here the
object is taken away behind the handle's back, as the failed write does, and the check
must refuse it.
"""

from __future__ import annotations

import os

import pytest

from gateway.errors import TokenRefused
from gateway.token import SecretSpec, SecretType, Token, Usage


@pytest.fixture
def token(softhsm_token: Token) -> Token:
    return softhsm_token  # the shared adapter token (token_fixtures.py)


def test_an_object_gone_right_after_creation_is_refused(token: Token) -> None:
    def op(s: object) -> None:
        session = s.handle  # type: ignore[attr-defined]
        spec = SecretSpec(os.urandom(16), "kept", SecretType.AES, 32, Usage(encrypt=True))
        handle = token._generate_secret(session, spec)
        token._confirm_stored(session, handle)  # kept: no error
        token._destroy_handles(session, (handle,))
        with pytest.raises(TokenRefused, match="did not keep it") as raised:
            token._confirm_stored(session, handle)
        assert raised.value.ckr == "CKR_OBJECT_HANDLE_INVALID"

    token._call(op)


def test_keys_made_through_every_creating_call_are_confirmed(token: Token) -> None:
    """The normal path still works: generate, then use the key (the read-back is one size query)."""
    info = token.generate_secret(SecretSpec(os.urandom(16), "kept", SecretType.AES, 32, Usage(encrypt=True)))
    assert info.kid and token.aes_gcm(info.kid, bytes(12), b"data")
