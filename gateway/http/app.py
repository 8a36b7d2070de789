"""The aiohttp application factory and the TLS context.

The factory only wires things together: routes, middlewares, application
state and the token set's lifetime.  The token set is opened on startup (in a
worker thread: opening loads modules and logs in, which blocks) and closed on
shutdown, unless the caller passed one in, in which case the caller owns it.
Running the server (workers, signals, graceful shutdown) is ``gateway.server``.
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
from gateway.core import metrics
from gateway.http import docs, health, hem, middleware, vault
from gateway.http import metrics as metrics_routes
from gateway.http.keys import CONFIG_KEY, TOKENS_KEY

if TYPE_CHECKING:
    from gateway.token import TokenSet
    from gateway.token.settings import TokenSettings

log = logging.getLogger(__name__)

# Closing logs out every session; a token stuck in a call (a hung HSM) must not
# keep the process from exiting.
CLOSE_TIMEOUT_SECONDS = 10.0


class TokenCloseTimeout(Exception):
    """The token set did not close in time (a call is stuck in the token)."""


def _owned_tokens(settings: list[TokenSettings]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Cleanup context that opens the token set on startup and closes it on shutdown."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        from gateway.token import TokenSet  # lazy: loads pkcs11

        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(None, TokenSet.open, settings)
        metrics.instrument_tokens(tokens)
        app[TOKENS_KEY] = tokens
        try:
            yield
        finally:
            closing = loop.run_in_executor(None, tokens.close)
            try:
                await asyncio.wait_for(asyncio.shield(closing), CLOSE_TIMEOUT_SECONDS)
            except TimeoutError:
                raise TokenCloseTimeout(
                    f"the tokens did not close within {CLOSE_TIMEOUT_SECONDS:g}s (a call is stuck in a token)"
                ) from None
            log.info("tokens closed (sessions logged out)")

    return lifecycle


def create_app(config: Config, tokens: TokenSet | None = None) -> web.Application:
    """Build the application; ``tokens`` None: open them from ``config`` on startup.

    PINs are resolved here, before the server starts, so a missing PIN file or
    variable is a ConfigError at start rather than a failed startup hook.
    """
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=middleware.service_middlewares(config.server))
    middleware.install(app)
    app[CONFIG_KEY] = config
    if tokens is None:
        app.cleanup_ctx.append(_owned_tokens(config.token_settings()))
    else:
        metrics.instrument_tokens(tokens)
        app[TOKENS_KEY] = tokens
    health.add_routes(app)
    metrics_routes.add_routes(app)
    docs.add_routes(app)
    vault.add_routes(app)  # Provide Vault dialect, /api/v1/vaults (docs/vault.md)
    hem.setup(app)  # Encedo HEM dialect, /api/{auth,keymgmt,crypto,logger,system} (docs/hem.md)
    if config.server.fault_hooks:  # testing only (tests/stress)
        from gateway.http import faults

        faults.add_routes(app)
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


def create_probe_app(config: Config, main: web.Application) -> web.Application:
    """The plain-HTTP app of ``server.plain_listen``: /healthz, /readyz, /metrics only.

    It shares ``main``'s token set; build it after ``main`` has started.
    """
    app = web.Application(client_max_size=1024, middlewares=middleware.service_middlewares(config.server))
    middleware.install(app)
    app[CONFIG_KEY] = config
    app[TOKENS_KEY] = main[TOKENS_KEY]
    health.add_routes(app)
    metrics_routes.add_routes(app)
    return app
