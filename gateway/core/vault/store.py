"""Vault records and key lookup across the configured tokens.

Vault records live in the token like everything else.  They are CKO_DATA
objects on the first token that stores those (SoftHSM2 does; NSS softoken
refuses CKO_DATA token objects).  If no configured token does, each record is
the CKA_LABEL of a 16-byte generic secret key with every usage flag off: any
token can create such an object, in one call, visible to other processes at
once, and it can do nothing.

Keys are found on whichever token holds them: a process-local map from key
id to token name spares a search over every token; a miss (or a stale
entry, e.g. a key deleted by another process) falls back to searching all
tokens in config order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final
from uuid import UUID

from gateway.errors import NotFound, Unsupported
from gateway.token import KeyClass, SecretSpec, SecretType, Token, TokenSet, Usage

from .models import Vault, VaultKey
from .records import key_from_info, vault_from_record, vault_record

log = logging.getLogger(__name__)

DATA_APPLICATION: Final = "pkcs11-gateway/vault"
_MARKER_BYTES: Final = 16


class VaultRecords:
    """Create, list and delete vault records on one token (see the module docstring)."""

    def __init__(self, tokens: TokenSet) -> None:
        self.token = next((t for t in tokens if t.capabilities.data_objects), None)
        self.as_data = self.token is not None
        if self.token is None:
            self.token = next(iter(tokens), None)
        if self.token is None:
            raise Unsupported("no token is configured to hold vault records", "token")
        log.info("vault records: %s on token %r", "CKO_DATA objects" if self.as_data else "marker key labels",
                 self.token.name)

    async def create(self, vault: Vault) -> None:
        token = self.token
        assert token is not None
        record = vault_record(vault)
        if self.as_data:
            await token.run(token.create_data, DATA_APPLICATION, str(vault.id), record.encode("utf-8"))
        else:
            spec = SecretSpec(vault.id.bytes, record, SecretType.GENERIC, _MARKER_BYTES, Usage())
            await token.run(token.generate_secret, spec)

    async def get(self, vault_id: UUID) -> Vault | None:
        """One vault by id, without listing them all (cached lookups in the adapter:
        on SoftHSM2 a listing scans every object in the token)."""
        token = self.token
        assert token is not None
        if self.as_data:
            record = await token.run(token.get_data, DATA_APPLICATION, str(vault_id))
            text: str | bytes | None = record.value if record is not None else None
        else:
            info = await token.run(token.find_key, vault_id.bytes)
            text = info.label if info is not None else None
        vault = vault_from_record(text) if text is not None else None
        return vault if vault is not None and vault.id == vault_id else None

    async def all(self) -> list[Vault]:
        token = self.token
        assert token is not None
        if self.as_data:
            texts: list[str | bytes] = [d.value for d in await token.run(token.list_data, DATA_APPLICATION)]
        else:
            texts = [i.label for i in await token.run(token.list_keys)
                     if i.key_class is KeyClass.SECRET and i.secret_type is SecretType.GENERIC]
        vaults = [v for v in map(vault_from_record, texts) if v is not None]
        return sorted(vaults, key=lambda v: (v.created_at, str(v.id)))

    async def delete(self, vault: Vault) -> None:
        token = self.token
        assert token is not None
        if self.as_data:
            await token.run(token.destroy_data, DATA_APPLICATION, str(vault.id))
        else:
            try:
                await token.run(token.destroy, vault.id.bytes)
            except NotFound:
                pass  # deleted meanwhile by another request or process


class KeyDirectory:
    """Finds vault keys on whichever token holds them."""

    def __init__(self, tokens: TokenSet) -> None:
        self.tokens = tokens
        self._where: dict[UUID, str] = {}

    def remember(self, key: VaultKey) -> None:
        self._where[key.id] = key.token_name

    def forget(self, key_id: UUID) -> None:
        self._where.pop(key_id, None)

    async def find(self, key_id: UUID) -> VaultKey | None:
        kid = key_id.bytes
        name = self._where.get(key_id)
        if name is not None and name in self.tokens.names:
            token = self.tokens[name]
            info = await token.run(token.find_key, kid)
            if info is not None:
                return key_from_info(info)
        self.forget(key_id)
        try:
            info = await self.tokens.locate(kid)
        except NotFound:
            return None
        key = key_from_info(info)
        if key is not None:
            self.remember(key)
        return key

    async def in_vault(self, vault_id: UUID) -> list[VaultKey]:
        """Every key of the vault, on all tokens (one object scan per token)."""

        async def scan(token: Token) -> list[VaultKey]:
            keys = [key_from_info(i) for i in await token.run(token.list_keys)]
            return [k for k in keys if k is not None]

        found: list[VaultKey] = []
        for keys in await asyncio.gather(*(scan(t) for t in self.tokens)):
            for key in keys:
                self.remember(key)
                if key.vault_id == vault_id:
                    found.append(key)
        return sorted(found, key=lambda k: (k.created_at, str(k.id)))
