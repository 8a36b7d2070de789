"""HEM key management on a token: create, import, list, search, get, update, delete, derive.

Every key is one token object (a pair for asymmetric keys) whose CKA_LABEL
holds its metadata (``meta.KeyMeta``); each call is one PKCS#11 creation, so a
failure leaves nothing behind and other processes see results at once.
Objects without HEM metadata (the gateway's own keys, other dialects' keys)
are invisible here: asking for one by kid is "unknown kid" (406).
"""

from __future__ import annotations

from gateway.core import metrics

import functools
import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x448, x25519

from gateway.core.hem import recipes
from gateway.core.hem.meta import (
    ORIGIN_DERIVED,
    ORIGIN_GENERATED,
    ORIGIN_IMPORTED,
    KeyMeta,
    b64,
    b64decode,
    parse_descr,
    parse_kid,
    parse_label,
)
from gateway.core.hem.recipes import Recipe
from gateway.core.hem.types import ECDH, KeyType
from gateway.errors import InvalidInput, NotFound, Unsupported
from gateway.token.types import Curve, HashAlg, KeyClass, KeyInfo, SecretSpec

if TYPE_CHECKING:
    from gateway.token import Token

MAX_PAGE: Final = 15
MAX_NEEDLE_BYTES: Final = 64
# Keys remembered for use (see HemKeys.load_for_use); bounded so memory stays flat.
USE_CACHE_KEYS: Final = 4096

_EC: Final = {
    Curve.P256: ec.SECP256R1(),
    Curve.P384: ec.SECP384R1(),
    Curve.P521: ec.SECP521R1(),
    Curve.SECP256K1: ec.SECP256K1(),
}


@dataclass(frozen=True)
class HemKey:
    """A key object with its HEM metadata."""

    info: KeyInfo
    meta: KeyMeta

    @property
    def kid(self) -> bytes:
        return self.info.kid

    @property
    def private(self) -> bool:
        return self.info.key_class is not KeyClass.PUBLIC

    @property
    def public_key(self) -> bytes | None:
        """The public key as HEM shows it: compressed X9.63 for SECP, raw otherwise."""
        raw = self.info.public_key
        if raw is None or self.info.curve is None:
            return None
        if self.info.curve in _EC:
            point = ec.EllipticCurvePublicKey.from_encoded_point(_EC[self.info.curve], raw)
            return point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        return raw

    def list_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kid": self.kid.hex(),
            "created": self.meta.created,
            "type": self.meta.type.descriptor(self.meta.modes, self.private),
            "label": self.meta.label,
            "updated": self.meta.updated,
        }
        if self.meta.descr:
            entry["descr"] = b64(self.meta.descr)
        return entry


@functools.lru_cache(maxsize=1024)  # clients repeat their peer keys; decompressing a point costs ~30 us
def canonical_public_key(key_type: KeyType, data: bytes) -> bytes:
    """Validate a public key of ``key_type``: compressed X9.63 for SECP, raw for the rest (400 when wrong)."""
    curve = key_type.curve
    if curve is None:
        raise Unsupported(f"{key_type.value} keys cannot be imported: only public keys of asymmetric types can",
                          "public-key import")
    try:
        if curve in _EC:
            point = ec.EllipticCurvePublicKey.from_encoded_point(_EC[curve], data)
            return point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        loaders: dict[Curve, Any] = {Curve.X25519: x25519.X25519PublicKey, Curve.X448: x448.X448PublicKey,
                                     Curve.ED25519: ed25519.Ed25519PublicKey, Curve.ED448: ed448.Ed448PublicKey}
        loader = loaders[curve]
        loader.from_public_bytes(data)
    except ValueError:
        size = f"{1 + curve.field_bytes} bytes compressed" if curve in _EC else f"{curve.public_bytes} bytes"
        raise InvalidInput(f"pubkey is not a {key_type.value} public key (expected {size})") from None
    return data


def import_kid(canonical: bytes) -> bytes:
    """HEM's kid of an imported key: the first 16 bytes of SHA-1 of the public key."""
    return hashlib.sha1(canonical).digest()[:16]  # noqa: S324 - an identifier, as HEM defines it


def _now() -> int:
    return int(time.time())


def _page(keys: list[HemKey], offset: int, count: int) -> dict[str, Any]:
    page = keys[offset:offset + count]
    return {"offset": offset, "deleted": 0, "total": len(keys), "listed": len(page), "list": [k.list_entry() for k in page]}


@dataclass(frozen=True)
class Peer:
    """The other side of an ECDH: a stored key (kid) or a public key from the request."""

    kid: bytes | None = None
    public_key: bytes | None = None

    @property
    def recorded(self) -> str:
        """What a derived key's metadata remembers about its peer (a kid either way)."""
        if self.kid is not None:
            return self.kid.hex()
        assert self.public_key is not None
        return import_kid(self.public_key).hex()

    def args(self) -> dict[str, bytes]:
        return {"peer_kid": self.kid} if self.kid is not None else {"peer": self.public_key}  # type: ignore[dict-item]


class HemKeys:
    """Key management for the HEM dialect on one token."""

    def __init__(self, token: Token, recipe_setting: str = "auto", allow_asymmetric: bool = False) -> None:
        self.token = token
        self.recipe_setting = recipe_setting
        self.allow_asymmetric = allow_asymmetric
        self._for_use: OrderedDict[bytes, HemKey] = OrderedDict()

    @property
    def recipe(self) -> Recipe:
        return recipes.resolve(self.recipe_setting, self.token.capabilities)

    # -- lookup ---------------------------------------------------------------

    async def load(self, kid: bytes) -> HemKey:
        info = await self.token.run(self.token.find_key, kid)
        meta = KeyMeta.decode(info.label) if info is not None else None
        if info is None or meta is None:
            raise NotFound(f"no key with kid {kid.hex()}")
        return HemKey(info, meta)

    async def load_for_use(self, kid: bytes) -> HemKey:
        """A key about to be used (ECDH, derive, cipher, HMAC, signatures), from a per-process
        cache after its first load.

        Using a key reads only what never changes in a key's life: type, modes,
        class, curve, usage flags and public key (update changes label and descr
        only).  Whether the key still exists is the token call's to say: a key
        another process deleted fails it with NotFound, as a fresh load would.
        """
        key = self._for_use.get(kid)
        if key is not None:
            self._for_use.move_to_end(kid)
            return key
        key = await self.load(kid)
        self._for_use[kid] = key
        if len(self._for_use) > USE_CACHE_KEYS:
            self._for_use.popitem(last=False)
        return key

    async def all(self) -> list[HemKey]:
        keys = []
        for info in await self.token.run(self.token.list_keys):
            meta = KeyMeta.decode(info.label)
            if meta is not None:
                keys.append(HemKey(info, meta))
        keys.sort(key=lambda k: (k.meta.created, k.kid))
        return keys

    # -- create / import ----------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> bytes:
        label = parse_label(body.get("label"))
        key_type = KeyType.parse(body.get("type"))
        modes = key_type.modes(body.get("mode"))
        descr = parse_descr(body.get("descr")) or b""
        key_type.require_supported(self.token.capabilities)
        now = _now()
        meta = KeyMeta(label, key_type, modes, now, now, descr, ORIGIN_GENERATED)
        kid = os.urandom(16)
        usage = key_type.usage(modes)
        if key_type.curve is not None:
            await self.token.run(self.token.generate_keypair, kid, meta.encode(), key_type.curve, usage)
        else:
            kind, length = key_type.secret  # type: ignore[misc]
            await self.token.run(self.token.generate_secret, SecretSpec(kid, meta.encode(), kind, length, usage))
        return kid

    async def import_key(self, body: dict[str, Any]) -> bytes:
        label = parse_label(body.get("label"))
        key_type = KeyType.parse(body.get("type"))
        modes = key_type.modes(body.get("mode"))
        descr = parse_descr(body.get("descr")) or b""
        if body.get("pubkey") is None:
            raise InvalidInput("pubkey is required: the base64 public key to import")
        raw = b64decode(body.get("pubkey"), "pubkey")
        if key_type.is_pqc:
            key_type.require_supported(self.token.capabilities)
        canonical = canonical_public_key(key_type, raw)
        assert key_type.curve is not None
        self.token.capabilities.require_curve(key_type.curve)
        now = _now()
        meta = KeyMeta(label, key_type, modes, now, now, descr, ORIGIN_IMPORTED)
        kid = import_kid(canonical)
        await self.token.run(self.token.import_public_key, kid, meta.encode(), key_type.curve, canonical, key_type.usage(modes))
        return kid

    # -- list / search / get ---------------------------------------------------------

    async def list(self, offset: int, count: int = MAX_PAGE) -> dict[str, Any]:
        return _page(await self.all(), offset, max(0, min(count, MAX_PAGE)))

    async def search(self, body: dict[str, Any]) -> dict[str, Any]:
        needle_text = body.get("descr")
        if not isinstance(needle_text, str) or not needle_text.strip("^$"):
            raise InvalidInput("descr is required: a base64 needle, optionally anchored with ^ (start) and $ (end)")
        start, end = needle_text.startswith("^"), needle_text.endswith("$")
        needle = b64decode(needle_text[1 if start else 0: len(needle_text) - (1 if end else 0)], "descr")
        if len(needle) > MAX_NEEDLE_BYTES:
            raise Unsupported(f"the search needle is {len(needle)} bytes; at most {MAX_NEEDLE_BYTES} are searched",
                              "needle over 64 bytes")
        offset = _count(body.get("offset", 0), "offset")
        limit = min(_count(body.get("limit", MAX_PAGE), "limit"), MAX_PAGE)

        def matches(descr: bytes) -> bool:
            if start and end:
                return descr == needle
            if start:
                return descr.startswith(needle)
            if end:
                return descr.endswith(needle)
            return needle in descr

        found = [k for k in await self.all() if matches(k.meta.descr)]
        return _page(found, offset, limit)

    async def get(self, kid: bytes) -> dict[str, Any]:
        key = await self.load(kid)
        answer: dict[str, Any] = {"type": key.meta.type.value, "updated": key.meta.updated}
        public = key.public_key
        if public is not None:
            answer["pubkey"] = b64(public)
        if key.meta.descr:
            answer["descr"] = b64(key.meta.descr)
        # Gateway additions (HEM clients ignore unknown members):
        answer["label"] = key.meta.label
        answer["created"] = key.meta.created
        answer["mode"] = ",".join(key.meta.modes)
        answer["origin"] = {ORIGIN_GENERATED: "generated", ORIGIN_IMPORTED: "imported", ORIGIN_DERIVED: "derived"}.get(key.meta.origin, key.meta.origin)
        if key.meta.recipe is not None:
            answer["recipe"] = key.meta.recipe
            answer["base"] = key.meta.base
            answer["peer"] = key.meta.peer
        return answer

    # -- update / delete -----------------------------------------------------------

    async def update(self, body: dict[str, Any]) -> bytes:
        kid = parse_kid(body.get("kid"))
        label = parse_label(body.get("label"))
        descr = parse_descr(body.get("descr"))
        key = await self.load(kid)
        await self.token.run(self.token.set_label, kid, key.meta.updated_with(label, descr, _now()).encode())
        self._for_use.pop(kid, None)
        return kid

    async def delete(self, kid: bytes) -> None:
        await self.load(kid)
        self._for_use.pop(kid, None)
        await self.token.run(self.token.destroy, kid)

    # -- derive ----------------------------------------------------------------------

    async def ecdh_base(self, kid: bytes) -> HemKey:
        """A stored private key that may do ECDH (406 otherwise)."""
        base = await self.load_for_use(kid)
        curve = base.info.curve
        if not base.private or curve is None or curve.family == "edwards" or ECDH not in base.meta.modes or not base.info.usage.derive:
            raise Unsupported(f"key {kid.hex()} cannot do ECDH: it is not a private {ECDH}-mode key", "CKA_DERIVE")
        return base

    async def peer(self, base: HemKey, body: dict[str, Any]) -> Peer:
        """The peer of an ECDH: ``ext_kid`` wins over ``pubkey``; it must be of the base key's type (400)."""
        if body.get("ext_kid") is not None:
            peer_kid = parse_kid(body.get("ext_kid"), "ext_kid")
            peer = await self.load_for_use(peer_kid)
            if peer.meta.type is not base.meta.type:
                raise InvalidInput(f"the peer key {peer_kid.hex()} is {peer.meta.type.value}, the key {base.kid.hex()} "
                                   f"is {base.meta.type.value}; ECDH needs both of one type")
            if peer.info.public_key is None:
                raise InvalidInput(f"the peer key {peer_kid.hex()} has no public key")
            return Peer(kid=peer_kid)
        if body.get("pubkey") is not None:
            raw = b64decode(body.get("pubkey"), "pubkey")
            return Peer(public_key=canonical_public_key(base.meta.type, raw))
        raise InvalidInput("ext_kid or pubkey is required: the peer of the ECDH")

    async def derive(self, body: dict[str, Any]) -> bytes:
        kid = parse_kid(body.get("kid"))
        label = parse_label(body.get("label"))
        target = KeyType.parse(body.get("type"))
        modes = target.modes(body.get("mode"))
        descr = parse_descr(body.get("descr")) or b""
        if target.is_pqc:
            mech = "CKM_ML_KEM_KEY_PAIR_GEN" if target.name.startswith("MLKEM") else "CKM_ML_DSA_KEY_PAIR_GEN"
            raise Unsupported(f"{target.value} keys cannot be derived (HEM only generates them, and the token "
                              f"has no {mech})", mech)
        base = await self.ecdh_base(kid)
        peer = await self.peer(base, body)
        assert base.info.curve is not None
        caps = self.token.capabilities
        recipe = self.recipe
        now = _now()
        meta = KeyMeta(label, target, modes, now, now, descr, ORIGIN_DERIVED, base=kid.hex(), peer=peer.recorded, recipe=recipe.value)
        new_kid = os.urandom(16)
        usage = target.usage(modes)
        if target.is_symmetric:
            target.require_supported(caps)
            recipes.check_symmetric(recipe, target, base.info.curve, caps)
            kind, length = target.secret  # type: ignore[misc]
            spec = SecretSpec(new_kid, meta.encode(), kind, length, usage)
            if recipe is Recipe.RAW:
                await self.token.run(self.token.ecdh_derive, kid, spec, **peer.args())
            else:
                await self.token.run(self.token.ecdh_hkdf_derive, kid, spec, salt=None, info=recipes.info_for(target),
                                     hash_alg=HashAlg.SHA256, **peer.args())
            metrics.keys_derived.labels(dialect="hem").inc()
            return new_kid
        recipes.require_asymmetric_policy(self.allow_asymmetric, target)
        target.require_supported(caps)
        z = bytearray(await self.token.run(self.token.ecdh_secret, kid, **peer.args()))
        try:
            seed = recipes.seed_from_secret(recipe, target, z)
        finally:
            recipes.wipe(z)
        try:
            recipes.check_scalar(target, seed)
            assert target.curve is not None
            public = recipes.public_key_of(target, seed)
            await self.token.run(self.token.import_key_pair, new_kid, meta.encode(), target.curve, bytes(seed), public, usage)
        finally:
            recipes.wipe(seed)
        metrics.keys_derived.labels(dialect="hem").inc()
        return new_kid


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")
    return value


def parse_offset(text: str, name: str = "offset") -> int:
    """A path segment of decimal digits."""
    if not text.isdigit() or len(text) > 9:
        raise InvalidInput(f"{name} must be decimal digits, got {text[:20]!r}")
    return int(text)


def b64_or_empty(value: object, name: str) -> bytes:
    return b"" if value is None else b64decode(value, name)

