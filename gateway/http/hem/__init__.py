"""The Encedo HEM dialect (docs/hem.md): ``setup(app)`` is its one entry point.

It does nothing without a ``[hem]`` section.  Otherwise it opens the audit log
and the HEM core after the tokens (``gateway.http.hem.state``), registers the
routes, and with ``hem.dev_user`` prints a ready-to-paste example at start.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.keys import CONFIG_KEY


def setup(app: web.Application) -> None:
    config = app[CONFIG_KEY]
    if config.hem is None:
        return
    from gateway.http import audit
    from gateway.http.hem import banner, routes, state

    audit.setup(app)
    app[state.HEM_KEY] = state.HemState()
    app.cleanup_ctx.append(state.lifecycle)
    routes.add_routes(app)
    if config.hem.dev_user:
        app.on_startup.append(banner.print_banner)
