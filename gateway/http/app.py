"""The aiohttp application factory and the server runner.

The factory only wires things together: routes, application state and the
token set's lifetime.  The token set is opened on startup (in a worker
thread: opening loads modules and logs in, which blocks) and closed on
shutdown, unless the caller passed one in, in which case the caller owns it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import Config, ServerConfig
from gateway.errors import ConfigError
from gateway.http import health, hem, vault
from gateway.http.keys import CONFIG_KEY, TOKENS_KEY

if TYPE_CHECKING:
    from gateway.token import TokenSet
    from gateway.token.settings import TokenSettings

log = logging.getLogger(__name__)


def _owned_tokens(settings: list[TokenSettings]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Cleanup context that opens the token set on startup and closes it on shutdown."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        from gateway.token import TokenSet  # lazy: loads pkcs11

        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(None, TokenSet.open, settings)
        app[TOKENS_KEY] = tokens
        try:
            yield
        finally:
            await loop.run_in_executor(None, tokens.close)

    return lifecycle


def create_app(config: Config, tokens: TokenSet | None = None) -> web.Application:
    """Build the application; ``tokens`` None: open them from ``config`` on startup.

    PINs are resolved here, before the server starts, so a missing PIN file or
    variable is a ConfigError at start rather than a failed startup hook.
    """
    app = web.Application()
    app[CONFIG_KEY] = config
    if tokens is None:
        app.cleanup_ctx.append(_owned_tokens(config.token_settings()))
    else:
        app[TOKENS_KEY] = tokens
    health.add_routes(app)
    vault.add_routes(app)  # Provide Vault dialect, /api/v1/vaults (docs/vault.md)
    hem.setup(app)  # Encedo HEM dialect, /api/{auth,keymgmt,crypto,logger,system} (docs/hem.md)
    return app


def ssl_context(server: ServerConfig) -> ssl.SSLContext | None:
    """A server TLS context when ``tls_cert``/``tls_key`` are configured, else None."""
    if server.tls_cert is None or server.tls_key is None:
        return None
    for key, path in (("server.tls_cert", server.tls_cert), ("server.tls_key", server.tls_key)):
        if not path.is_file():
            raise ConfigError(f"{key}: {path} does not exist; expected a PEM file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"server.tls_cert / server.tls_key: cannot load {server.tls_cert} with "
            f"{server.tls_key}: {exc}; expected a PEM certificate chain and its private key"
        ) from None
    return context


def run_server(config: Config) -> None:
    """Serve until interrupted (blocking), on ``server.listen``, over TLS if configured."""
    context = ssl_context(config.server)
    app = create_app(config)
    scheme = "https" if context is not None else "http"
    log.info("starting on %s://%s (tokens: %s)", scheme, config.server.listen,
             ", ".join(config.token_names))
    web.run_app(app, host=config.server.host, port=config.server.port, ssl_context=context,
                print=None)
