"""HEM routes: parse, delegate to the core, shape the answer (docs/hem.md)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.core.hem.access import Operation, Principal
from gateway.core.hem.events import LogType
from gateway.core.hem.keys import MAX_PAGE, parse_offset
from gateway.core.hem.meta import b64, parse_kid
from gateway.errors import InvalidInput
from gateway.http.audit import audit_log
from gateway.http.hem.guard import Call, empty, kid_in_body, kid_in_path, login_call, open_call, protected
from gateway.http.hem.state import HEM_KEY, hem_service
from gateway.http.transport import is_secure

MAX_LOG_IDS = 128


def _note_kids(call: Call, *names: str) -> None:
    """Remember the request's kids for the audit record, where they are well formed."""
    for name in names:
        value = call.body.get(name)
        if value is None:  # absent: the common case, and no exception to build and drop
            continue
        try:
            call.add_kid(parse_kid(value))
        except InvalidInput:
            pass


# -- open calls -------------------------------------------------------------------


@open_call
async def version(request: web.Request) -> web.Response:
    return web.json_response({"hwv": "pkcs11-gateway", "fwv": f"pkcs11-gateway {__version__}", "fwk": "", "fws": "",
                              "blv": "-"})


@open_call
async def status(request: web.Request) -> web.Response:
    state = request.app[HEM_KEY]
    now = time.time()
    answer: dict[str, Any] = {
        "fls_state": 0, "ctx": 0, "uptime": int(now - state.started), "temp": 0,
        # ts present: clients never attempt the vendor's clock check-in
        "ts": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "time": int(now),
        "https": is_secure(request),
    }
    if state.service is None:
        answer["inited"] = False  # present only when NOT initialised, as on the device
    return web.json_response(answer)


@open_call
async def challenge(request: web.Request) -> web.Response:
    service = await hem_service(request.app)
    return web.json_response((await service.auth.challenge()).as_json())


@login_call
async def login(request: web.Request, service: Any, body: dict[str, Any]) -> tuple[web.Response, Principal]:
    token, principal = await service.auth.login(body.get("auth"))
    return web.json_response({"token": token}), principal


# -- key management ----------------------------------------------------------------


@protected(LogType.KEY_GENERATION, Operation.CREATE)
async def create(call: Call) -> web.Response:
    kid = await call.service.keys.create(call.body)
    call.add_kid(kid)
    return web.json_response({"kid": kid.hex()})


@protected(LogType.KEY_IMPORT, Operation.IMPORT)
async def import_key(call: Call) -> web.Response:
    kid = await call.service.keys.import_key(call.body)
    call.add_kid(kid)
    return web.json_response({"kid": kid.hex()})


@protected(LogType.KEY_LIST, Operation.LIST)
async def list_keys(call: Call) -> web.Response:
    info = call.request.match_info
    offset = parse_offset(info.get("offset", "0"))
    count = parse_offset(info["count"], "count") if "count" in info else MAX_PAGE
    return web.json_response(await call.service.keys.list(offset, count))


@protected(LogType.KEY_SEARCH, Operation.SEARCH)
async def search(call: Call) -> web.Response:
    return web.json_response(await call.service.keys.search(call.body))


@protected(LogType.KEY_GET, Operation.GET, kid_in_path)
async def get_key(call: Call) -> web.Response:
    assert call.kid is not None
    return web.json_response(await call.service.keys.get(call.kid))


@protected(LogType.KEY_ATTRIBUTES_CHANGED, Operation.UPDATE)
async def update(call: Call) -> web.Response:
    _note_kids(call, "kid")
    await call.service.keys.update(call.body)
    return empty()


@protected(LogType.KEY_DELETE, Operation.DELETE)
async def delete(call: Call) -> web.Response:
    kid = parse_kid(call.request.match_info.get("kid"))
    call.add_kid(kid)
    await call.service.keys.delete(kid)
    return empty()


@protected(LogType.KEY_DERIVE, Operation.DERIVE)
async def derive(call: Call) -> web.Response:
    _note_kids(call, "kid", "ext_kid")
    kid = await call.service.keys.derive(call.body)
    call.add_kid(kid)
    return web.json_response({"kid": kid.hex()})


# -- using keys ------------------------------------------------------------------------


@protected(LogType.CRYPTO_ECDH, Operation.USE, kid_in_body)
async def ecdh(call: Call) -> web.Response:
    _note_kids(call, "ext_kid")
    return web.json_response({"ecdh": b64(await call.service.crypto.ecdh(call.body))})


@protected(LogType.CRYPTO_ENCRYPT, Operation.USE, kid_in_body)
async def encrypt(call: Call) -> web.Response:
    return web.json_response(await call.service.crypto.encrypt(call.body))


@protected(LogType.CRYPTO_DECRYPT, Operation.USE, kid_in_body)
async def decrypt(call: Call) -> web.Response:
    return web.json_response({"plaintext": b64(await call.service.crypto.decrypt(call.body))})


@protected(LogType.CRYPTO_HMAC, Operation.USE, kid_in_body)
async def hmac_hash(call: Call) -> web.Response:
    return web.json_response({"mac": b64(await call.service.crypto.hmac(call.body))})


@protected(LogType.CRYPTO_HMAC_VERIFY, Operation.USE, kid_in_body)
async def hmac_verify(call: Call) -> web.Response:
    await call.service.crypto.hmac_verify(call.body)
    return empty()


@protected(LogType.CRYPTO_SIGN, Operation.USE, kid_in_body)
async def sign(call: Call) -> web.Response:
    return web.json_response({"sign": b64(await call.service.crypto.sign(call.body))})


@protected(LogType.CRYPTO_VERIFY, Operation.USE, kid_in_body)
async def verify(call: Call) -> web.Response:
    await call.service.crypto.verify(call.body)
    return empty()


# -- audit log ----------------------------------------------------------------------------


@protected(LogType.LOGGER_READ, Operation.LOGGER)
async def logger_list(call: Call) -> web.Response:
    offset = parse_offset(call.request.match_info.get("offset", "0"))
    ids = (await audit_log(call.request.app)).segments()
    return web.json_response({"total": len(ids), "id": ids[offset:offset + MAX_LOG_IDS]})


@protected(LogType.LOGGER_READ, Operation.LOGGER)
async def logger_get(call: Call) -> web.Response:
    text = (await audit_log(call.request.app)).read_segment(call.request.match_info["id"])
    return web.Response(text=text, content_type="text/plain")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/system/version", version)
    r.add_get("/api/system/status", status)
    r.add_get("/api/auth/token", challenge)
    r.add_post("/api/auth/token", login)
    r.add_post("/api/keymgmt/create", create)
    r.add_post("/api/keymgmt/import", import_key)
    r.add_get("/api/keymgmt/list", list_keys)
    r.add_get("/api/keymgmt/list/{offset}", list_keys)
    r.add_get("/api/keymgmt/list/{offset}/{count}", list_keys)
    r.add_post("/api/keymgmt/search", search)
    r.add_get("/api/keymgmt/get/{kid}", get_key)
    r.add_post("/api/keymgmt/update", update)
    r.add_delete("/api/keymgmt/delete/{kid}", delete)
    r.add_post("/api/keymgmt/derive", derive)
    r.add_post("/api/crypto/ecdh", ecdh)
    r.add_post("/api/crypto/cipher/encrypt", encrypt)
    r.add_post("/api/crypto/cipher/decrypt", decrypt)
    r.add_post("/api/crypto/hmac/hash", hmac_hash)
    r.add_post("/api/crypto/hmac/verify", hmac_verify)
    r.add_post("/api/crypto/exdsa/sign", sign)
    r.add_post("/api/crypto/exdsa/verify", verify)
    r.add_get("/api/logger/list", logger_list)
    r.add_get("/api/logger/list/{offset}", logger_list)
    r.add_get(r"/api/logger/{id:[0-9a-f]{8}}", logger_get)
