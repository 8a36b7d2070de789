"""``GET /metrics``: Prometheus text exposition (all workers' values with several workers)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.core import metrics
from gateway.http.keys import TOKENS_KEY


async def metrics_handler(request: web.Request) -> web.Response:
    tokens = request.app.get(TOKENS_KEY)
    if tokens is not None:
        metrics.update_token_gauges(tokens)
    # Multiprocess mode reads every worker's files: keep that off the event loop.
    accept = request.headers.get("Accept", "")
    body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.render, accept)
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_handler, name="metrics")
