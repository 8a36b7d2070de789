"""The application's audit log (``gateway.core.audit``), shared by the dialects.

``setup(app)`` (idempotent: every dialect that records may call it) opens the
log on startup, after the tokens.  ``await audit_log(app)`` returns it, opening
it then if the audit token could not be reached at start (TokenUnavailable if
it still cannot: callers answer 409/503, nothing access-controlled runs
unaudited).  ``await audit_log(app)).record(AuditEvent(...))`` appends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import Config
from gateway.core.audit import AuditLog
from gateway.errors import TokenUnavailable
from gateway.http.keys import REQUEST_ID_KEY, CONFIG_KEY, TOKENS_KEY
from gateway.http.request_ids import new_request_id

log = logging.getLogger(__name__)


class AuditState:
    """Holder of the app's audit log (app state is frozen once the app starts)."""

    def __init__(self) -> None:
        self.log: AuditLog | None = None
        self.lock = asyncio.Lock()


AUDIT_KEY: web.AppKey[AuditState] = web.AppKey("audit", AuditState)


def audit_token_name(config: Config, token_names: list[str]) -> str:
    if config.audit is not None and config.audit.token:
        return config.audit.token
    if config.hem is not None and config.hem.token:
        return config.hem.token
    return token_names[0]


async def _open(app: web.Application) -> AuditLog:
    config = app[CONFIG_KEY]
    tokens = app[TOKENS_KEY]
    token = tokens[audit_token_name(config, tokens.names)]
    directory = config.audit.directory if config.audit is not None else config.state_dir / "audit"
    segment_bytes = config.audit.segment_bytes if config.audit is not None else 1 << 20
    return await AuditLog.open(directory, token, segment_bytes=segment_bytes)


async def audit_log(app: web.Application) -> AuditLog:
    """The audit log, opened now if the start could not (TokenUnavailable if it still cannot)."""
    state = app[AUDIT_KEY]
    if state.log is not None:
        return state.log
    async with state.lock:
        if state.log is None:
            state.log = await _open(app)
        return state.log


def request_id(request: web.Request) -> str:
    """The id another middleware gave the request, else a new one (kept on the request)."""
    rid = request.get(REQUEST_ID_KEY)
    if not rid:
        rid = new_request_id()
        request[REQUEST_ID_KEY] = rid
    return rid


def setup(app: web.Application) -> None:
    if AUDIT_KEY in app:
        return
    state = AuditState()
    app[AUDIT_KEY] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            state.log = await _open(app)
        except TokenUnavailable as exc:
            log.warning("audit log not opened at start (%s); retrying on the first audited call", exc.message)
        try:
            yield
        finally:
            if state.log is not None:
                state.log.close()

    app.cleanup_ctx.append(lifecycle)
