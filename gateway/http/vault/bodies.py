"""Request parsing and response bodies of the Vault dialect (Provide's field names and shapes).

Type errors (a string where a number belongs, bad hex) are 400 like
Provide's JSON decoding errors; missing fields and unknown enum values are
``Unprocessable`` (422), like Provide's validation.
"""

from __future__ import annotations

import binascii
import enum
import json
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from aiohttp import web

from gateway.core.vault import DeriveRecipe, DeriveRequest, KeyRequest, KeySpec, KeyType, KeyUsage, Vault, VaultKey, rfc3339
from gateway.core.vault.models import MAX_CONTEXT_CHARS, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, NONCE_MAX
from gateway.errors import InvalidInput, Unprocessable

DEFAULT_RPP: Final = 25
MAX_RPP: Final = 100
E = TypeVar("E", bound=enum.Enum)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}`` (missing fields then say what is needed)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = f"{exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "cannot be decoded"
        raise InvalidInput(f"the request body is not valid JSON ({reason})") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


def text(body: Mapping[str, Any], name: str, max_chars: int, *, required: bool = True, non_empty: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Unprocessable(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    if non_empty and not value:
        raise Unprocessable(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is longer than {max_chars} characters")
    return value


def choice(body: Mapping[str, Any], name: str, kind: type[E]) -> E:
    value = body.get(name)
    expected = ", ".join(repr(m.value) for m in kind)
    if value is None:
        raise Unprocessable(f"{name} is required; expected one of {expected}")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    for member in kind:
        if member.value == value:
            return member
    raise Unprocessable(f"unknown {name} {value[:64]!r}; expected one of {expected}")


def hex_bytes(body: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    """Hex, with or without a 0x prefix."""
    value = body.get(name)
    if value is None:
        if required:
            raise Unprocessable(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a hex string")
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        return binascii.unhexlify(digits)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid hex") from None


def nonce(body: Mapping[str, Any]) -> int | None:
    """A JSON integer 0..2^32-1 (a string, even of digits, is refused as Provide does)."""
    value = body.get("nonce")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"nonce must be a JSON integer from 0 to {NONCE_MAX}, got {_json_type(value)}")
    if not 0 <= value <= NONCE_MAX:
        raise InvalidInput(f"nonce must be a JSON integer from 0 to {NONCE_MAX}, got {value}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, list):
        return "an array"
    return "an object"


def page_params(query: Mapping[str, str]) -> tuple[int, int]:
    """``page`` (from 1) and ``rpp`` (1..100, default 25) from the query string."""
    out = []
    for name, default, top in (("page", 1, 10**9), ("rpp", DEFAULT_RPP, MAX_RPP)):
        raw = query.get(name)
        if raw is None or raw == "":
            out.append(default)
            continue
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not 1 <= int(raw) <= top:
            raise InvalidInput(f"{name} must be an integer from 1 to {top}, got {raw[:32]!r}")
        out.append(int(raw))
    return out[0], out[1]


def optional_choice(query: Mapping[str, str], name: str, kind: type[E]) -> E | None:
    raw = query.get(name)
    return None if not raw else choice({name: raw}, name, kind)


# --------------------------------------------------------------------------- requests


def vault_request(body: Mapping[str, Any]) -> tuple[str, str]:
    name = text(body, "name", MAX_NAME_CHARS)
    description = text(body, "description", MAX_DESCRIPTION_CHARS, required=False, non_empty=False) or ""
    assert name is not None
    return name, description


def key_request(body: Mapping[str, Any]) -> KeyRequest:
    if body.get("vault_id") is not None:
        raise Unprocessable("vault_id cannot be set explicitly")
    if body.get("public_key") is not None:
        raise Unprocessable("importing key material is not supported; public_key should not be provided")
    key_type = choice(body, "type", KeyType)
    usage = choice(body, "usage", KeyUsage)
    spec = choice(body, "spec", KeySpec)
    name = text(body, "name", MAX_NAME_CHARS)
    description = text(body, "description", MAX_DESCRIPTION_CHARS, required=False, non_empty=False) or ""
    assert name is not None
    return KeyRequest(key_type, usage, spec, name, description, hex_bytes(body, "secret", required=False))


def derive_request(body: Mapping[str, Any]) -> DeriveRequest:
    value = nonce(body)  # type errors (400) before missing fields (422), as Provide decodes first
    context = text(body, "context", MAX_CONTEXT_CHARS)
    name = text(body, "name", MAX_NAME_CHARS)
    description = text(body, "description", MAX_DESCRIPTION_CHARS, non_empty=False)
    assert context is not None and name is not None and description is not None
    return DeriveRequest(value, context, name, description)


# --------------------------------------------------------------------------- responses


def vault_json(vault: Vault) -> dict[str, Any]:
    return {"id": str(vault.id), "created_at": rfc3339(vault.created_at), "name": vault.name,
            "description": vault.description}


def derivation_json(recipe: DeriveRecipe) -> dict[str, Any]:
    return {
        "parent_id": str(recipe.parent_id),
        "nonce": recipe.nonce,
        "context": recipe.context,
        "kdf": recipe.kdf.value,
        "mechanism": recipe.kdf.mechanism,
        "salt": recipe.salt.hex(),  # the nonce, 4 bytes big-endian
    }


def key_json(key: VaultKey, *, detail: bool = True) -> dict[str, Any]:
    """The key; ``detail`` False gives exactly the fields of Provide's derive answer."""
    body: dict[str, Any] = {
        "id": str(key.id),
        "created_at": rfc3339(key.created_at),
        "vault_id": str(key.vault_id),
        "type": key.type.value,
        "usage": key.usage.value,
        "spec": key.spec.value,
        "name": key.name,
        "description": key.description,
    }
    if detail and key.public_key is not None:
        body["public_key"] = key.public_key.hex()
    if detail and key.derivation is not None:
        body["derivation"] = derivation_json(key.derivation)
    return body
