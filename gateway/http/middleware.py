"""Middlewares every request passes through, whatever its dialect.

One middleware (``service_middlewares``) does, outermost first:

1. gives the request an id (``request[REQUEST_ID_KEY]``, the ``X-Request-Id``
   response header, the log context);
2. turns every failure into a JSON ``{"message": ...}`` answer: aiohttp's own
   404/405/413, gateway errors that no dialect mapped, and unexpected
   exceptions (500, logged with the request id; the client never sees a
   stack trace);
3. refuses bodies over ``server.max_body_bytes`` (413) and bounds the whole
   request, body upload included, by ``server.request_timeout`` (504).  It
   reads the body before the handler runs, so handlers never wait on a slow
   client and the limit holds for chunked bodies too;
4. logs and counts the answer.

:func:`security_headers` is a response-prepare signal, so it also covers
streamed and static answers.  :class:`GatewayRunner` makes the few answers
aiohttp writes before any middleware runs (malformed HTTP) JSON as well.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from gateway.http.keys import REQUEST_ID_KEY
from gateway.http.request_ids import new_request_id
from aiohttp.web_protocol import RequestHandler

from gateway import errors
from gateway.config import ServerConfig
from gateway.core import metrics
from gateway.http.errors import Dialect, status_for
from gateway.logs import REQUEST_ID, AccessLog

log = logging.getLogger(__name__)
access_log = AccessLog()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER: Final = "X-Request-Id"
SERVER_HEADER: Final = "pkcs11-gateway"  # deliberately without a version
# An id a proxy sent along is kept when it is short and harmless in logs and audit records.
_INCOMING_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{8,64}")
UNMATCHED_ROUTE: Final = "unmatched"

# Where no page says otherwise: an API answer is data, never a document to render.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"
HSTS: Final = "max-age=31536000"


def route_label(request: web.BaseRequest) -> str:
    """The route template (``/api/keymgmt/get/{kid}``), never the concrete path."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(match_info, "http_exception", None) is not None:
        return UNMATCHED_ROUTE
    return str(resource.canonical)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The common error body ``{"message": ...}``."""
    return web.Response(status=status, body=json.dumps({"message": message}),
                        content_type="application/json", headers=headers)


# --------------------------------------------------------------------------- the middleware


class _Deadlines:
    """``server.request_timeout`` for every request of one application, checked by one timer.

    ``asyncio.timeout`` per request schedules and cancels a timer handle and
    builds a context manager on every request, about 4% of the event loop's
    time on ``/api/crypto/ecdh`` (py-spy, ``make bench``).  Here a request
    costs a dictionary entry, and one timer per loop cancels the tasks whose
    time is up: a request gets its 504 between ``seconds`` and ``seconds`` plus
    :meth:`period` after it started.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.period = min(1.0, seconds / 10)
        self._running: dict[asyncio.Task[Any], tuple[float, int]] = {}  # task -> (deadline, cancelling())
        self._fired: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._running[task] = (loop.time() + self.seconds, task.cancelling())
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self.period, self._sweep)
        return task

    def _sweep(self) -> None:
        self._timer = None
        if not self._running or self._loop is None:
            return  # the next request starts the timer again
        now = self._loop.time()
        for task, (deadline, _) in self._running.items():
            if deadline <= now and task not in self._fired:
                self._fired.add(task)
                task.cancel()  # delivered at the task's next await, not here
        self._timer = self._loop.call_later(self.period, self._sweep)

    def finish(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``; whether its time ran out and nobody else cancelled it (a shutdown's
        cancellation stands), as ``asyncio.timeout`` decides."""
        _, before = self._running.pop(task)
        if task not in self._fired:
            return False
        self._fired.discard(task)
        return task.uncancel() <= before


def service_middlewares(server: ServerConfig) -> list[Any]:
    """The middleware of every gateway application: see the module docstring.

    One function instead of one per step: each middleware layer costs the event
    loop a coroutine and a call per request."""
    max_body = server.max_body_bytes
    timeout = server.request_timeout
    deadlines = _Deadlines(timeout)

    @web.middleware
    async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
        # 1. the request id
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _INCOMING_ID_RE.fullmatch(incoming) else new_request_id()
        request[REQUEST_ID_KEY] = request_id
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500
        try:
            try:
                # 3. the body limit (before reading), and the deadline over body and handler
                length = request.content_length
                if length is not None and length > max_body:
                    # Answer before reading; the connection closes, so the rest is never read.
                    raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
                task = deadlines.start()
                try:
                    if request.body_exists:
                        await request.read()  # aiohttp enforces client_max_size while reading
                    response = await handler(request)
                except asyncio.CancelledError:
                    if not deadlines.finish(task):
                        raise
                    log.warning("request timed out after %gs", timeout)
                    response = json_error(504, f"the request did not complete within {timeout:g} seconds")
                except BaseException:
                    deadlines.finish(task)
                    raise
                else:
                    deadlines.finish(task)  # in time, or the time ran out just as the handler finished
            # 2. every failure as a JSON answer
            except web.HTTPException as exc:
                if exc.status < 400 or exc.content_type == "application/json":
                    raise
                # aiohttp's own answers (404, 405, 413, ...) come as text/plain.
                headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
                response = json_error(exc.status, _http_message(exc), headers)
            except errors.GatewayError as exc:
                # Dialects map their own errors; what reaches here gets the service table.
                code = status_for(exc, Dialect.SERVICE)
                if code >= 500:
                    log.error("unmapped %s answered %d: %s", type(exc).__name__, code, exc.message)
                    response = json_error(code, "internal error")
                else:
                    response = json_error(code, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.rel_url.path)
                response = json_error(500, f"internal error (request id {request_id})")
            status = response.status
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:  # redirects, and JSON errors a dialect raised as exceptions
            status = exc.status
            raise
        finally:
            # 4. the access line and the request metrics
            elapsed = time.perf_counter() - start
            route = route_label(request)
            metrics.observe_request(route, request.method, status, elapsed)
            access_log.write(request.method, request.rel_url.path, route, status, round(elapsed * 1000, 3),
                             request.remote, request_id)
            REQUEST_ID.reset(token)

    return [serve]


def _http_message(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return "no such route"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {exc.method} is not allowed here; allowed: {allowed}"
    text = exc.text or ""
    # aiohttp's texts start with "<status>: "; keep what follows.
    prefix = f"{exc.status}: "
    return text[len(prefix):] if text.startswith(prefix) else (text or exc.reason)


# --------------------------------------------------------------------------- headers


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: hardening headers on every answer (a handler may preset CSP)."""
    headers = response.headers
    headers["Server"] = SERVER_HEADER
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("Content-Security-Policy", API_CSP)
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", HSTS)
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


def install(app: web.Application) -> None:
    """Register the response signal (the middlewares go to the Application constructor)."""
    app.on_response_prepare.append(security_headers)


# --------------------------------------------------------------------------- malformed HTTP


class _JsonErrorRequestHandler(RequestHandler):
    """Answers aiohttp produces before routing (malformed requests) as JSON, too."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, and raises if already answering
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        text = "internal error" if status >= 500 else f"malformed request ({phrase})"
        response = json_error(status, text, {"Server": SERVER_HEADER, "X-Content-Type-Options": "nosniff",
                                             "Cache-Control": "no-store"})
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose low-level error answers are JSON without a version banner."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same state, one overridden factory method
        return server
