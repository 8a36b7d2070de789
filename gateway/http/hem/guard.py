"""What every access-controlled HEM call goes through, in order:

1. TLS (418 over plain HTTP, see ``gateway.http.transport``);
2. the HEM core and the audit log must be up (409 otherwise);
3. the bearer token (401);
4. role and scope (403) -- before reading the body, except for calls whose
   scope names the kid they act on (``keymgmt:use:<kid>``), which need the
   kid first (400 when it is malformed);
5. the handler; gateway errors become status codes in ``gateway/http/errors.py``.

Whatever the outcome, one audit record: HEM's event type and result, the
status answered, the subject, the kids and the request id -- never a body,
a token or a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.core.audit import AuditEvent, AuditLog, AuditResult
from gateway.core.hem.access import Operation, Principal, check
from gateway.core.hem.events import LogType
from gateway.core.hem.meta import parse_kid
from gateway.errors import GatewayError, InvalidInput, TlsRequired
from gateway.http.audit import audit_log, request_id
from gateway.http.errors import Dialect, error_response
from gateway.http.hem.state import hem_service
from gateway.http.transport import is_secure

if TYPE_CHECKING:
    from gateway.core.hem.service import HemService

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 + 8192


@dataclass
class Call:
    """One request being served: what the handler reads and what the audit record says."""

    request: web.Request
    service: HemService
    body: dict[str, Any]
    principal: Principal | None = None
    kid: bytes | None = None
    kids: list[str] = field(default_factory=list)

    def add_kid(self, kid: bytes | None) -> None:
        if kid is not None and kid.hex() not in self.kids:
            self.kids.append(kid.hex())


Handler = Callable[[Call], Awaitable[web.Response]]
KidSource = Callable[[web.Request, dict[str, Any]], bytes]


def kid_in_body(request: web.Request, body: dict[str, Any]) -> bytes:
    return parse_kid(body.get("kid"))


def kid_in_path(request: web.Request, body: dict[str, Any]) -> bytes:
    return parse_kid(request.match_info.get("kid"))


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.method != "POST":
        return {}
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidInput(f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def empty(status: int = 200) -> web.Response:
    """HEM's bodiless answer (JSON content type, no content)."""
    return web.Response(status=status, body=b"", content_type="application/json")


def _event_for(status: int, event: LogType) -> LogType:
    if status == 401:
        return LogType.AUTH_FAILED
    if status == 403:
        return LogType.FAILED_SCOPE_CHECK
    if status == 418:
        return LogType.TLS_REQUIRED
    return event


def _count(event: LogType, status: int) -> None:
    """Failed logins not answered 401.  Every 401 is counted where it is answered
    (gateway.http.errors) and derived keys where they are made (the core)."""
    if status != 401 and event is LogType.AUTH_FAILED_INTERNAL:
        from gateway.core import metrics  # here, not per request: it is rare

        metrics.auth_failures.labels(dialect="hem").inc()


async def _record(request: web.Request, event: LogType, status: int, principal: Principal | None,
                  kids: list[str], detail: str, audit: AuditLog | None = None) -> None:
    """``audit``: the log, where the call already has it (else it is looked up, and opened if need be)."""
    _count(event, status)
    try:
        if audit is None:
            audit = await audit_log(request.app)
        await audit.record(AuditEvent(
            event=event.label, code=event.code, result=AuditResult.for_status(status), status=status,
            subject=principal.subject if principal is not None else "-", kids=tuple(kids),
            request_id=request_id(request), dialect="hem", detail=detail,
        ))
    except Exception:  # noqa: BLE001 - the answer is given; a lost record is logged loudly
        log.exception("HEM: could not write the audit record of %s %s (status %d)", request.method, request.path, status)


def protected(event: LogType, operation: Operation, kid_source: KidSource | None = None) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.Response]]]:
    """Wrap a handler of an access-controlled call (see the module docstring)."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            principal: Principal | None = None
            call: Call | None = None
            audit: AuditLog | None = None
            kids: list[str] = []
            detail = ""
            try:
                if not is_secure(request):
                    raise TlsRequired("TLS connection required: call this API over HTTPS")
                service = await hem_service(request.app)
                audit = await audit_log(request.app)  # nothing runs unaudited
                principal = await service.auth.authenticate(request.headers.get("Authorization"))
                if kid_source is None:
                    check(principal, operation)
                body = await read_body(request)
                call = Call(request, service, body, principal)
                if kid_source is not None:
                    call.kid = kid_source(request, body)
                    call.add_kid(call.kid)
                    kids = call.kids
                    check(principal, operation, call.kid)
                kids = call.kids
                response = await handler(call)
                status = response.status
            except GatewayError as exc:
                response = error_response(exc, Dialect.HEM)
                status, detail = response.status, exc.message
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("HEM: %s %s failed", request.method, request.path)
                status, detail = 500, "internal error"
                response = web.json_response({"message": "internal error"}, status=500)
            if call is not None:
                kids = call.kids
            await _record(request, _event_for(status, event), status, principal, kids, detail, audit)
            return response

        return serve

    return wrap


def login_call(handler: Callable[[web.Request, HemService, dict[str, Any]], Awaitable[tuple[web.Response, Principal]]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /api/auth/token``: TLS, then the handshake; audited like the others."""

    async def serve(request: web.Request) -> web.Response:
        principal: Principal | None = None
        detail = ""
        try:
            if not is_secure(request):
                raise TlsRequired("TLS connection required: log in over HTTPS")
            service = await hem_service(request.app)
            await audit_log(request.app)
            try:
                body = await read_body(request)
            except InvalidInput:
                # malformed logins are failed logins too (delayed and counted)
                body = {"auth": None}
            response, principal = await handler(request, service, body)
            status = response.status
        except GatewayError as exc:
            response = error_response(exc, Dialect.HEM)
            status, detail = response.status, exc.message
        event = LogType.AUTH_SUCCESS_INTERNAL if status == 200 else (
            LogType.TLS_REQUIRED if status == 418 else LogType.AUTH_FAILED_INTERNAL)
        await _record(request, event, status, principal, [], detail)
        return response

    return serve


def open_call(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Calls without access control (challenge, version, status): only error mapping."""

    async def serve(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return error_response(exc, Dialect.HEM)

    return serve

