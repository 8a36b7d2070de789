"""The one error hierarchy of the gateway.

Every layer raises these; the HTTP dialects map them to status codes in one
table each (``gateway/http/errors.py``).  Messages are written for the API
caller: they say what is wrong and never carry secret material.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(GatewayError):
    """The request is malformed or names impossible values (bad point, bad length)."""


class Unprocessable(InvalidInput):
    """Well-formed input that lacks a required field or names an unknown value
    (the Provide Vault dialect answers 422; dialects without the distinction, 400)."""


class NotFound(GatewayError):
    """The named key, vault or object does not exist (or is not the caller's)."""


class AlreadyExists(GatewayError):
    """An object with that identity exists already (duplicate import)."""


class Unsupported(GatewayError):
    """The token cannot do what was asked; ``mechanism`` names what it lacks."""

    def __init__(self, message: str, mechanism: str) -> None:
        super().__init__(message)
        self.mechanism = mechanism


class PolicyDenied(GatewayError):
    """The deployment's configuration does not allow this operation."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class TokenRefused(GatewayError):
    """The token refused the operation (a CKR_ code other than 'gone')."""

    def __init__(self, message: str, ckr: str) -> None:
        super().__init__(message)
        self.ckr = ckr


class TokenUnavailable(GatewayError):
    """The token is unreachable or not usable, even after reconnecting."""


class Unauthorized(GatewayError):
    """Missing, malformed, forged or expired credentials."""


class Forbidden(GatewayError):
    """Valid credentials that do not allow this call (role or scope)."""


class TlsRequired(GatewayError):
    """An access-controlled call arrived over plain HTTP (HEM answers 418)."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key and what is expected."""
