"""Liveness and readiness probes.

``/healthz`` answers while the process serves HTTP at all; ``/readyz`` asks
the token set whether every token is reachable and logged in, so a load
balancer stops routing to an instance whose HSM went away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import web

from gateway.http.keys import TOKENS_KEY

log = logging.getLogger(__name__)

# A hung token must turn the probe red, not hang the probe.
READINESS_TIMEOUT_SECONDS: Final = 5.0


async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}``: the event loop is serving requests."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every token is ready, else 503; body ``{"ready": bool, "tokens": {name: bool}}``."""
    tokens = request.app[TOKENS_KEY]
    try:
        state = await asyncio.wait_for(tokens.readiness(), READINESS_TIMEOUT_SECONDS)
    except Exception:  # noqa: BLE001 - a probe reports "not ready", it does not fail with 500
        log.warning("readiness check failed", exc_info=True)
        state = {name: False for name in tokens.names}
    ready = bool(state) and all(state.values())
    return web.json_response(
        {"ready": ready, "tokens": {name: bool(ok) for name, ok in state.items()}},
        status=200 if ready else 503,
    )


def add_routes(app: web.Application) -> None:
    """Register the probe routes."""
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
