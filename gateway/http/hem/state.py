"""The HEM core of a running app: started after the tokens, or on first use if the
token was unreachable at start (until then HEM calls answer 409, "not initialised")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.errors import TokenUnavailable
from gateway.http.keys import CONFIG_KEY, TOKENS_KEY

if TYPE_CHECKING:
    from gateway.core.hem.service import HemService

log = logging.getLogger(__name__)


class HemState:
    def __init__(self) -> None:
        self.service: HemService | None = None
        self.lock = asyncio.Lock()
        self.started = time.time()


HEM_KEY: web.AppKey[HemState] = web.AppKey("hem", HemState)


async def _start(app: web.Application) -> HemService:
    from gateway.core.hem.service import HemService

    return await HemService.start(app[CONFIG_KEY], app[TOKENS_KEY])


async def hem_service(app: web.Application) -> HemService:
    state = app[HEM_KEY]
    if state.service is not None:
        return state.service
    async with state.lock:
        if state.service is None:
            try:
                state.service = await _start(app)
            except TokenUnavailable as exc:
                raise TokenUnavailable(f"the HEM dialect is not initialised: {exc.message}") from None
        return state.service


def lifecycle(app: web.Application) -> AsyncIterator[None]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        try:
            await hem_service(app)
        except TokenUnavailable as exc:
            log.warning("%s; retrying on the first HEM call", exc.message)
        yield

    return run(app)
