"""The Provide Vault routes (``/api/v1/vaults...``): authenticate, parse, call the core, render.

Every request needs ``Authorization: Bearer <JWT>`` from a configured issuer
(``[vault]`` issuers); the caller's application, else organization, else
user owns what it creates.  Errors become ``{"message": ...}`` answers
through ``gateway.http.errors`` (Dialect.VAULT).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from gateway.config import VaultConfig
from gateway.core.issuers import IssuerSet, bearer_token
from gateway.core.vault import KeySpec, KeyType, Owner, VaultService, paginate, principal_from_claims
from gateway.errors import GatewayError, InvalidInput, NotFound, Unprocessable
from gateway.http.errors import Dialect, error_response
from gateway.http.keys import CONFIG_KEY, TOKENS_KEY

from . import bodies

log = logging.getLogger(__name__)

PREFIX: Final = "/api/v1/vaults"
TOTAL_HEADER: Final = "x-total-results-count"
# Claims a Vault bearer token must carry (besides an owner id, checked after).
REQUIRED_CLAIMS: Final = ("exp", "iat")


class VaultApi:
    """Per-application state: the issuers (loaded at start) and the service (made on first use,
    once the token set is open)."""

    def __init__(self, config: VaultConfig) -> None:
        self.config = config
        self.issuers = IssuerSet.load(config.issuers)
        self._service: VaultService | None = None

    def service(self, app: web.Application) -> VaultService:
        if self._service is None:
            self._service = VaultService(app[TOKENS_KEY], allow_secret_import=self.config.allow_secret_import)
        return self._service

    def owner(self, request: web.Request) -> Owner:
        verified = self.issuers.verify(bearer_token(request.headers.get("Authorization")), required=REQUIRED_CLAIMS)
        return principal_from_claims(verified.claims).owner


API_KEY: web.AppKey[VaultApi] = web.AppKey("vault_api", VaultApi)


@dataclass(frozen=True)
class Call:
    """One authenticated request."""

    request: web.Request
    service: VaultService
    owner: Owner

    def _uuid(self, name: str, what: str) -> UUID:
        try:
            return UUID(self.request.match_info[name])
        except ValueError:
            raise NotFound(f"{what} not found") from None

    @property
    def vault_id(self) -> UUID:
        return self._uuid("id", "vault")

    @property
    def key_id(self) -> UUID:
        return self._uuid("key_id", "key")

    async def body(self) -> dict[str, Any]:
        return await bodies.json_object(self.request)


Endpoint = Callable[[Call], Awaitable[web.StreamResponse]]


def endpoint(fn: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate, run, and answer gateway errors in the Vault dialect."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            api = request.app[API_KEY]
            owner = api.owner(request)
            return await fn(Call(request, api.service(request.app), owner))
        except GatewayError as exc:
            return error_response(exc, Dialect.VAULT)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - the dialect answers JSON even for bugs
            log.exception("vault: %s %s failed", request.method, request.path)
            return web.json_response({"message": "internal server error"}, status=500)

    handler.__name__ = fn.__name__
    return handler


def listing(items: list[Any], request: web.Request) -> web.Response:
    page, rpp = bodies.page_params(request.query)
    response = web.json_response(paginate(items, page, rpp))
    response.headers[TOTAL_HEADER] = str(len(items))
    return response


def no_content() -> web.Response:
    return web.Response(status=204)


# --------------------------------------------------------------------------- vaults


@endpoint
async def list_vaults(call: Call) -> web.Response:
    bodies.page_params(call.request.query)  # bad paging is a 400 before any token work
    vaults = await call.service.list_vaults(call.owner)
    return listing([bodies.vault_json(v) for v in vaults], call.request)


@endpoint
async def create_vault(call: Call) -> web.Response:
    name, description = bodies.vault_request(await call.body())
    vault = await call.service.create_vault(call.owner, name, description)
    return web.json_response(bodies.vault_json(vault), status=201)


@endpoint
async def delete_vault(call: Call) -> web.Response:
    await call.service.delete_vault(call.owner, call.vault_id)
    return no_content()


# --------------------------------------------------------------------------- keys


@endpoint
async def list_keys(call: Call) -> web.Response:
    query = call.request.query
    bodies.page_params(query)
    spec = bodies.optional_choice(query, "spec", KeySpec)
    key_type = bodies.optional_choice(query, "type", KeyType)
    keys = await call.service.list_keys(call.owner, call.vault_id, spec=spec, key_type=key_type)
    return listing([bodies.key_json(k) for k in keys], call.request)


@endpoint
async def create_key(call: Call) -> web.Response:
    request = bodies.key_request(await call.body())
    key = await call.service.create_key(call.owner, call.vault_id, request)
    return web.json_response(bodies.key_json(key), status=201)


@endpoint
async def get_key(call: Call) -> web.Response:
    key = await call.service.get_key(call.owner, call.vault_id, call.key_id)
    return web.json_response(bodies.key_json(key))


@endpoint
async def delete_key(call: Call) -> web.Response:
    await call.service.delete_key(call.owner, call.vault_id, call.key_id)
    return no_content()


@endpoint
async def derive_key(call: Call) -> web.Response:
    request = bodies.derive_request(await call.body())
    child = await call.service.derive(call.owner, call.vault_id, call.key_id, request)
    return web.json_response(bodies.key_json(child, detail=False), status=201)


# --------------------------------------------------------------------------- using keys


@endpoint
async def encrypt(call: Call) -> web.Response:
    body = await call.body()
    data = bodies.text(body, "data", 1 << 20, non_empty=False)
    assert data is not None
    nonce = bodies.hex_bytes(body, "nonce", required=False)
    blob = await call.service.encrypt(call.owner, call.vault_id, call.key_id, data.encode("utf-8"), nonce)
    return web.json_response({"data": blob.hex()})


@endpoint
async def decrypt(call: Call) -> web.Response:
    blob = bodies.hex_bytes(await call.body(), "data")
    assert blob is not None
    plain = await call.service.decrypt(call.owner, call.vault_id, call.key_id, blob)
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the decrypted data is not UTF-8 text (this API encrypts text)") from None
    return web.json_response({"data": text})


@endpoint
async def sign(call: Call) -> web.Response:
    body = await call.body()
    if body.get("signature") is not None or body.get("verified") is not None:
        raise Unprocessable("only the message to be signed should be provided")
    message = bodies.hex_bytes(body, "message")
    assert message is not None
    signature = await call.service.sign(call.owner, call.vault_id, call.key_id, message)
    return web.json_response({"signature": signature.hex()}, status=201)


@endpoint
async def verify(call: Call) -> web.Response:
    body = await call.body()
    message = bodies.hex_bytes(body, "message")
    signature = bodies.hex_bytes(body, "signature")
    assert message is not None and signature is not None
    verified = await call.service.verify(call.owner, call.vault_id, call.key_id, message, signature)
    return web.json_response({"verified": verified})


def add_routes(app: web.Application) -> None:
    """Register the Vault routes; the issuers' key files are read now (ConfigError at start)."""
    app[API_KEY] = VaultApi(app[CONFIG_KEY].vault)
    key = PREFIX + "/{id}/keys/{key_id}"
    app.router.add_get(PREFIX, list_vaults, name="vault-list")
    app.router.add_post(PREFIX, create_vault, name="vault-create")
    app.router.add_delete(PREFIX + "/{id}", delete_vault, name="vault-delete")
    app.router.add_get(PREFIX + "/{id}/keys", list_keys, name="vault-keys")
    app.router.add_post(PREFIX + "/{id}/keys", create_key, name="vault-key-create")
    app.router.add_get(key, get_key, name="vault-key")
    app.router.add_delete(key, delete_key, name="vault-key-delete")
    app.router.add_post(key + "/derive", derive_key, name="vault-key-derive")
    app.router.add_post(key + "/encrypt", encrypt, name="vault-key-encrypt")
    app.router.add_post(key + "/decrypt", decrypt, name="vault-key-decrypt")
    app.router.add_post(key + "/sign", sign, name="vault-key-sign")
    app.router.add_post(key + "/verify", verify, name="vault-key-verify")
