"""Typed application-state keys shared by the app factory and the handlers.

Kept apart from ``app.py`` so handler modules can import them without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import Config

if TYPE_CHECKING:
    from gateway.token import TokenSet

CONFIG_KEY: web.AppKey[Config] = web.AppKey("config", Config)
# No runtime type: gateway.token is imported lazily (it loads pkcs11).
TOKENS_KEY: web.AppKey[TokenSet] = web.AppKey("tokens")

# The request id every log line and audit record of a request carries.
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
