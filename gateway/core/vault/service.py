"""The Vault dialect's operations: vaults, keys, derive, encrypt/decrypt, sign/verify.

Every operation takes the caller's ``Owner``; a vault of another owner, or a
key outside the named vault, is "not found" (Provide answers 404, not 403).
All key material stays in the tokens: keys are created, derived and used by
token calls, each on the worker threads of the token that holds the key.
"""

from __future__ import annotations

from gateway.core import metrics

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar
from uuid import UUID, uuid4

from gateway.errors import InvalidInput, NotFound, PolicyDenied, Unprocessable
from gateway.token import HashAlg, SecretSpec, TokenSet

from .models import (
    NONCE_MAX,
    SYMMETRIC_KEY_BYTES,
    DeriveRecipe,
    KeySpec,
    KeyType,
    KeyUsage,
    Vault,
    VaultKey,
    utc_now,
)
from .owner import Owner
from .placement import choose_token
from .records import key_label
from .store import KeyDirectory, VaultRecords

AEAD_NONCE_BYTES: Final = 12
AEAD_TAG_BYTES: Final = 16
DERIVE_NOT_SUPPORTED: Final = "key does not support derivation"  # Provide's message
T = TypeVar("T")


@dataclass(frozen=True)
class KeyRequest:
    type: KeyType
    usage: KeyUsage
    spec: KeySpec
    name: str
    description: str
    secret: bytes | None = field(default=None, repr=False)  # import; only with allow_secret_import


@dataclass(frozen=True)
class DeriveRequest:
    nonce: int | None  # None: a random one
    context: str
    name: str
    description: str


def paginate(items: Sequence[T], page: int, rpp: int) -> list[T]:
    """Page ``page`` (1-based) of ``rpp`` items."""
    start = (page - 1) * rpp
    return list(items[start:start + rpp])


def check_key_request(request: KeyRequest) -> None:
    """Provide's rules for type, usage and spec (422), then whether any token could hold it."""
    spec = request.spec
    if request.type is not spec.key_type:
        raise Unprocessable(f"{spec.value} keys are {spec.key_type.value}, not {request.type.value}")
    if request.usage not in spec.usages:
        allowed = " or ".join(sorted(u.value for u in spec.usages))
        raise Unprocessable(f"{spec.value} keys are for {allowed}, not {request.usage.value}")
    if request.secret is not None:
        if spec.key_type is not KeyType.SYMMETRIC:
            raise InvalidInput("only symmetric key material can be imported")
        if len(request.secret) != SYMMETRIC_KEY_BYTES:
            raise InvalidInput(f"a {spec.value} key is {SYMMETRIC_KEY_BYTES} bytes, got {len(request.secret)}")


class VaultService:
    """The core behind the Vault routes; one per application."""

    def __init__(self, tokens: TokenSet, *, allow_secret_import: bool = False) -> None:
        self.tokens = tokens
        self.allow_secret_import = allow_secret_import
        self.records = VaultRecords(tokens)
        self.keys = KeyDirectory(tokens)

    # -- vaults ----------------------------------------------------------------

    async def list_vaults(self, owner: Owner) -> list[Vault]:
        return [v for v in await self.records.all() if v.owner == owner]

    async def get_vault(self, owner: Owner, vault_id: UUID) -> Vault:
        vault = await self.records.get(vault_id)
        if vault is None or vault.owner != owner:
            raise NotFound("vault not found")  # another owner's vault is not revealed
        return vault

    async def create_vault(self, owner: Owner, name: str, description: str) -> Vault:
        vault = Vault(uuid4(), owner, name, description, utc_now())
        await self.records.create(vault)
        return vault

    async def delete_vault(self, owner: Owner, vault_id: UUID) -> None:
        """Destroys the vault's keys, then its record (a failure midway leaves the vault, with fewer keys)."""
        vault = await self.get_vault(owner, vault_id)
        for key in await self.keys.in_vault(vault.id):
            await self._destroy(key)
        await self.records.delete(vault)

    # -- keys --------------------------------------------------------------------

    async def list_keys(self, owner: Owner, vault_id: UUID, *, spec: KeySpec | None = None,
                        key_type: KeyType | None = None) -> list[VaultKey]:
        vault = await self.get_vault(owner, vault_id)
        return [k for k in await self.keys.in_vault(vault.id)
                if (spec is None or k.spec is spec) and (key_type is None or k.type is key_type)]

    async def get_key(self, owner: Owner, vault_id: UUID, key_id: UUID) -> VaultKey:
        vault = await self.get_vault(owner, vault_id)
        key = await self.keys.find(key_id)
        if key is None or key.vault_id != vault.id:
            raise NotFound("key not found")
        return key

    async def create_key(self, owner: Owner, vault_id: UUID, request: KeyRequest) -> VaultKey:
        vault = await self.get_vault(owner, vault_id)
        check_key_request(request)
        if request.secret is not None and not self.allow_secret_import:
            raise PolicyDenied("importing key material is disabled (vault.allow_secret_import = false)",
                               "vault.allow_secret_import")
        token = choose_token(self.tokens, request.spec)
        key = VaultKey(uuid4(), vault.id, request.type, request.usage, request.spec, request.name,
                       request.description, utc_now(), token_name=token.name)
        label = key_label(key)
        spec = request.spec
        if spec.secret_type is not None:
            out = SecretSpec(key.kid, label, spec.secret_type, SYMMETRIC_KEY_BYTES, spec.token_usage)
            if request.secret is not None:
                info = await token.run(token.import_secret, out, request.secret)
            else:
                info = await token.run(token.generate_secret, out)
        else:
            assert spec.curve is not None
            info = await token.run(token.generate_keypair, key.kid, label, spec.curve, spec.token_usage)
        created = replace(key, public_key=info.public_key)
        self.keys.remember(created)
        return created

    async def delete_key(self, owner: Owner, vault_id: UUID, key_id: UUID) -> None:
        await self._destroy(await self.get_key(owner, vault_id, key_id))

    async def _destroy(self, key: VaultKey) -> None:
        token = self.tokens[key.token_name]
        self.keys.forget(key.id)
        try:
            await token.run(token.destroy, key.kid)
        except NotFound:
            pass  # deleted meanwhile

    # -- derive --------------------------------------------------------------------

    async def derive(self, owner: Owner, vault_id: UUID, key_id: UUID, request: DeriveRequest) -> VaultKey:
        """A ChaCha20 child of a ChaCha20 key, made in the parent's token with CKM_HKDF_DERIVE:
        salt = the nonce as 4 bytes big-endian, info = the context (see DeriveRecipe)."""
        parent = await self.get_key(owner, vault_id, key_id)
        if parent.spec is not KeySpec.CHACHA20:
            raise InvalidInput(DERIVE_NOT_SUPPORTED)
        token = self.tokens[parent.token_name]  # derived keys stay on their parent's token
        nonce = request.nonce if request.nonce is not None else secrets.randbelow(NONCE_MAX + 1)
        recipe = DeriveRecipe(parent.id, nonce, request.context)
        token.capabilities.require_hkdf(recipe.kdf.hash_alg)
        child = VaultKey(uuid4(), parent.vault_id, KeyType.SYMMETRIC, KeyUsage.ENCRYPT_DECRYPT, KeySpec.CHACHA20,
                         request.name, request.description, utc_now(), derivation=recipe, token_name=token.name)
        out = SecretSpec(child.kid, key_label(child), KeySpec.CHACHA20.secret_type,  # type: ignore[arg-type]
                         SYMMETRIC_KEY_BYTES, KeySpec.CHACHA20.token_usage)
        await token.run(token.hkdf_derive, parent.kid, out, salt=recipe.salt, info=recipe.info,
                        hash_alg=recipe.kdf.hash_alg)
        self.keys.remember(child)
        metrics.keys_derived.labels(dialect="vault").inc()
        return child

    # -- using keys ------------------------------------------------------------------

    async def _symmetric(self, owner: Owner, vault_id: UUID, key_id: UUID, what: str) -> VaultKey:
        key = await self.get_key(owner, vault_id, key_id)
        if key.type is not KeyType.SYMMETRIC or key.usage is not KeyUsage.ENCRYPT_DECRYPT:
            raise InvalidInput(f"{key.spec.value} key {key.id} cannot {what}; expected a symmetric encrypt/decrypt key")
        return key

    async def _aead(self, key: VaultKey, nonce: bytes, data: bytes, decrypt: bool) -> bytes:
        token = self.tokens[key.token_name]
        if key.spec is KeySpec.CHACHA20:
            return await token.run(token.chacha20_poly1305, key.kid, nonce, data, b"", decrypt=decrypt)
        return await token.run(token.aes_gcm, key.kid, nonce, data, b"", decrypt=decrypt)

    async def encrypt(self, owner: Owner, vault_id: UUID, key_id: UUID, data: bytes, nonce: bytes | None) -> bytes:
        """nonce || ciphertext || tag; a random 12-byte nonce from the token when none is given."""
        key = await self._symmetric(owner, vault_id, key_id, "encrypt")
        if nonce is None:
            token = self.tokens[key.token_name]
            nonce = await token.run(token.random, AEAD_NONCE_BYTES)
        elif len(nonce) != AEAD_NONCE_BYTES:
            raise InvalidInput(f"the nonce is {AEAD_NONCE_BYTES} bytes, got {len(nonce)}")
        return nonce + await self._aead(key, nonce, data, decrypt=False)

    async def decrypt(self, owner: Owner, vault_id: UUID, key_id: UUID, blob: bytes) -> bytes:
        key = await self._symmetric(owner, vault_id, key_id, "decrypt")
        if len(blob) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
            raise InvalidInput(f"the data is {len(blob)} bytes, shorter than nonce and tag "
                               f"({AEAD_NONCE_BYTES + AEAD_TAG_BYTES} bytes)")
        return await self._aead(key, blob[:AEAD_NONCE_BYTES], blob[AEAD_NONCE_BYTES:], decrypt=True)

    async def _signing(self, owner: Owner, vault_id: UUID, key_id: UUID) -> VaultKey:
        key = await self.get_key(owner, vault_id, key_id)
        if key.spec not in (KeySpec.ED25519, KeySpec.SECP256K1) or key.usage is not KeyUsage.SIGN_VERIFY:
            raise InvalidInput(f"{key.spec.value} key {key.id} cannot sign or verify; expected an Ed25519 or secp256k1 "
                               "sign/verify key")
        return key

    @staticmethod
    def _hash(key: VaultKey) -> HashAlg | None:
        # secp256k1 signs ECDSA over SHA-256 of the message; Ed25519 is PureEdDSA.
        return HashAlg.SHA256 if key.spec is KeySpec.SECP256K1 else None

    async def sign(self, owner: Owner, vault_id: UUID, key_id: UUID, message: bytes) -> bytes:
        key = await self._signing(owner, vault_id, key_id)
        token = self.tokens[key.token_name]
        return await token.run(token.sign, key.kid, message, self._hash(key))

    async def verify(self, owner: Owner, vault_id: UUID, key_id: UUID, message: bytes, signature: bytes) -> bool:
        key = await self._signing(owner, vault_id, key_id)
        token = self.tokens[key.token_name]
        return await token.run(token.verify, key.kid, message, signature, self._hash(key))
