"""The one place where gateway errors become HTTP answers.

Each dialect keeps the status codes and body shape of the product it
imitates, so each has its own table; handlers never pick status codes for
errors themselves, they raise from ``gateway.errors``.
"""

from __future__ import annotations

import enum
import json
import logging

from aiohttp import web

from gateway import errors
from gateway.core import metrics

log = logging.getLogger(__name__)


class Dialect(enum.Enum):
    HEM = "hem"
    VAULT = "vault"
    SERVICE = "service"  # health, metrics, docs


# Most specific class first: lookups walk the exception's MRO.
STATUS: dict[Dialect, dict[type[errors.GatewayError], int]] = {
    Dialect.HEM: {
        errors.InvalidInput: 400,
        errors.Unauthorized: 401,
        errors.Forbidden: 403,
        errors.NotFound: 406,  # HEM answers an unknown kid with 406
        errors.AlreadyExists: 406,
        errors.Unsupported: 406,
        errors.PolicyDenied: 406,
        errors.TokenRefused: 406,
        errors.TokenUnavailable: 409,
        errors.TlsRequired: 418,  # "TLS connection required"
        errors.ConfigError: 500,
    },
    Dialect.VAULT: {
        errors.InvalidInput: 400,
        errors.Unprocessable: 422,  # Provide: missing fields, unknown specs
        errors.Unauthorized: 401,
        errors.Forbidden: 403,
        errors.NotFound: 404,
        errors.AlreadyExists: 409,
        errors.Unsupported: 422,
        errors.PolicyDenied: 403,  # e.g. secret import while vault.allow_secret_import is off
        errors.TokenRefused: 422,
        errors.TokenUnavailable: 503,
        errors.ConfigError: 500,
    },
    Dialect.SERVICE: {
        errors.InvalidInput: 400,
        errors.NotFound: 404,
        errors.TokenUnavailable: 503,
    },
}


def status_for(exc: errors.GatewayError, dialect: Dialect) -> int:
    table = STATUS[dialect]
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return 500


def error_response(exc: errors.GatewayError, dialect: Dialect) -> web.Response:
    """JSON error body: ``{"message": ...}`` in every dialect (HEM devices send
    empty bodies; a message costs HEM clients nothing and helps people)."""
    status = status_for(exc, dialect)
    if status == 401:
        metrics.auth_failures.labels(dialect=dialect.value).inc()
    if status >= 500:
        log.error("%s error answered %d: %s", dialect.value, status, exc.message)
    return web.Response(
        status=status,
        body=json.dumps({"message": exc.message}),
        content_type="application/json",
    )
