"""``/__test__/faults/*``: fault injection for the reliability suite (tests/stress), testing only.

Registered only when ``[server] fault_hooks = true`` (off by default; the gateway logs a
warning at start when it is on).  Each call acts on the worker process that answers it
(the answer names its pid), so a caller reaches every worker by repeating the call on new
connections.

- ``POST /__test__/faults/close-sessions``: every PKCS#11 session of this worker on every
  token is closed between calls (see ``gateway.core.faults.close_all_sessions``); the
  requests that follow recover.  Answers ``{"pid": N, "sessions": {token: held}}``.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from gateway.core.faults import close_all_sessions
from gateway.http.keys import TOKENS_KEY

log = logging.getLogger(__name__)

PREFIX = "/__test__/faults"


async def close_sessions(request: web.Request) -> web.Response:
    tokens = request.app[TOKENS_KEY]
    # A thread of its own: it waits for the token's own threads to hand their sessions back.
    held = {t.name: await asyncio.to_thread(close_all_sessions, t) for t in tokens}
    return web.json_response({"pid": os.getpid(), "sessions": held})


def add_routes(app: web.Application) -> None:
    log.warning("fault hooks are on (server.fault_hooks = true): %s/* can break this gateway on purpose; "
                "never enable them in production", PREFIX)
    app.router.add_post(PREFIX + "/close-sessions", close_sessions)
