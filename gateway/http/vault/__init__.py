"""The Provide Vault dialect (docs/vault.md): ``add_routes(app)`` is its one entry point."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register the Vault routes (imported here: the core pulls in the token adapter)."""
    from .routes import add_routes as add

    add(app)
