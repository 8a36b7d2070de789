"""Liveness and readiness probes.

``/healthz`` answers while the process serves HTTP at all (with the worker's
pid, so several workers can be told apart); ``/readyz`` asks the token set
whether every token is reachable and logged in, so a load balancer stops
routing to an instance whose HSM went away or hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from gateway.config import DEFAULT_READINESS_TIMEOUT
from gateway.core import metrics
from gateway.http.keys import CONFIG_KEY, TOKENS_KEY

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok", "pid": <worker pid>}``: the event loop is serving requests."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """200 when every token is ready, else 503; body ``{"ready": bool, "tokens": {name: bool}}``.

    A token that does not answer within ``server.readiness_timeout`` counts as
    not ready: a hung HSM must turn the probe red, not hang the probe.
    """
    tokens = request.app[TOKENS_KEY]
    config = request.app.get(CONFIG_KEY)
    timeout = config.server.readiness_timeout if config is not None else DEFAULT_READINESS_TIMEOUT
    try:
        state = await asyncio.wait_for(tokens.readiness(), timeout)
    except TimeoutError:
        log.warning("readiness check: the tokens did not answer within %gs", timeout)
        state = {name: False for name in tokens.names}
    except Exception:  # noqa: BLE001 - a probe reports "not ready", it does not fail with 500
        log.warning("readiness check failed", exc_info=True)
        state = {name: False for name in tokens.names}
    metrics.set_token_ready(state)
    ready = bool(state) and all(state.values())
    return web.json_response(
        {"ready": ready, "tokens": {name: bool(ok) for name, ok in state.items()}},
        status=200 if ready else 503,
    )


def add_routes(app: web.Application) -> None:
    """Register the probe routes."""
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
