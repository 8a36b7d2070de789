"""Using HEM keys, all in the token: ECDH, AES-GCM, HMAC, ECDSA/EdDSA.

The caller's scope must be exactly ``keymgmt:use:<kid>`` (checked by the
HTTP guard with ``access.check`` before these run).  ``/api/crypto/ecdh`` is
the one call whose caller asks for secret bytes.

Differences from the device, all answered 406 naming what is missing:
AES-ECB/CBC (the adapter offers AES-GCM), cipher/HMAC keys derived on the fly
from ``ext_kid``/``pubkey`` (derive a stored key instead), and the
Ed25519ph/Ed25519ctx/Ed448ph variants.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.core.hem.keys import HemKey, HemKeys, b64_or_empty
from gateway.core.hem.meta import b64, b64decode, parse_kid
from gateway.core.hem.types import EXDSA, HASH_NAMES, KeyType
from gateway.errors import InvalidInput, TokenRefused, Unsupported
from gateway.token.types import HashAlg

if TYPE_CHECKING:
    from gateway.token import Token

GCM_IV_BYTES: Final = 16  # the device's GCM nonce size
GCM_TAG_BYTES: Final = 16
MAX_MESSAGE_BYTES: Final = 64 * 1024
_CIPHER_RE: Final = re.compile(r"AES(128|192|256)-(ECB|CBC|GCM)")
_ECDSA: Final = {"SHA256WithECDSA": HashAlg.SHA256, "SHA384WithECDSA": HashAlg.SHA384, "SHA512WithECDSA": HashAlg.SHA512}
_EDDSA: Final = {"Ed25519": KeyType.ED25519, "Ed448": KeyType.ED448}
_EDDSA_VARIANTS: Final = ("Ed25519ph", "Ed25519ctx", "Ed448ph")


def _message(body: dict[str, Any], name: str = "msg") -> bytes:
    if body.get(name) is None:
        raise InvalidInput(f"{name} is required (base64)")
    data = b64decode(body.get(name), name)
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidInput(f"{name} is {len(data)} bytes; at most {MAX_MESSAGE_BYTES} are accepted")
    return data


def _no_ecdh_mode(body: dict[str, Any], call: str) -> None:
    if body.get("ext_kid") is not None or body.get("pubkey") is not None:
        raise Unsupported(f"{call} with a key derived on the fly from ext_kid/pubkey is not offered by the gateway; "
                          "derive a stored key with /api/keymgmt/derive and use it", "ECDH-derived session keys")


class HemCrypto:
    def __init__(self, keys: HemKeys) -> None:
        self.keys = keys

    @property
    def token(self) -> Token:
        return self.keys.token

    @staticmethod
    def kid_of(body: dict[str, Any]) -> bytes:
        return parse_kid(body.get("kid"))

    async def ecdh(self, body: dict[str, Any]) -> bytes:
        """The shared secret (raw Z), or its digest when ``alg`` names one."""
        alg = body.get("alg")
        if alg is not None and alg not in HASH_NAMES:
            raise InvalidInput(f"alg must be one of {', '.join(HASH_NAMES)}")
        base = await self.keys.ecdh_base(self.kid_of(body))
        peer = await self.keys.peer(base, body)
        secret = await self.token.run(self.token.ecdh_secret, base.kid, **peer.args())
        if alg is None:
            return secret
        return hashlib.new(HASH_NAMES[alg].name.lower(), secret).digest()

    async def _aes_key(self, body: dict[str, Any]) -> tuple[HemKey, str]:
        alg = body.get("alg")
        match = _CIPHER_RE.fullmatch(alg) if isinstance(alg, str) else None
        if match is None or not isinstance(alg, str):
            raise InvalidInput("alg must be AES128/192/256 with -ECB, -CBC or -GCM, e.g. AES256-GCM")
        _no_ecdh_mode(body, "encryption")
        if match.group(2) != "GCM":
            mech = f"CKM_AES_{match.group(2)}"
            raise Unsupported(f"{alg} is not offered by the gateway ({mech}); use AES{match.group(1)}-GCM", mech)
        key = await self.keys.load_for_use(self.kid_of(body))
        wanted = KeyType(f"AES{match.group(1)}")
        if key.meta.type is not wanted:
            raise Unsupported(f"key {key.kid.hex()} is {key.meta.type.value}; {alg} needs an {wanted.value} key", "CKK_AES")
        return key, alg

    async def encrypt(self, body: dict[str, Any]) -> dict[str, str]:
        key, _ = await self._aes_key(body)
        plaintext = _message(body)
        aad = b64_or_empty(body.get("aad"), "aad")
        iv = secrets.token_bytes(GCM_IV_BYTES)
        out = await self.token.run(self.token.aes_gcm, key.kid, iv, plaintext, aad)
        return {"ciphertext": b64(out[:-GCM_TAG_BYTES]), "iv": b64(iv), "tag": b64(out[-GCM_TAG_BYTES:])}

    async def decrypt(self, body: dict[str, Any]) -> bytes:
        key, _ = await self._aes_key(body)
        ciphertext = _message(body)
        iv = b64_or_empty(body.get("iv"), "iv")
        tag = b64_or_empty(body.get("tag"), "tag")
        if len(iv) != GCM_IV_BYTES:
            raise InvalidInput(f"iv must decode to exactly {GCM_IV_BYTES} bytes")
        if len(tag) != GCM_TAG_BYTES:
            raise InvalidInput(f"tag must decode to exactly {GCM_TAG_BYTES} bytes")
        aad = b64_or_empty(body.get("aad"), "aad")
        try:
            return await self.token.run(self.token.aes_gcm, key.kid, iv, ciphertext + tag, aad, decrypt=True)
        except (InvalidInput, TokenRefused) as exc:
            # Tokens disagree on the code of a failed tag check (SoftHSM2 says CKR_GENERAL_ERROR).
            ckr = getattr(exc, "ckr", "CKR_ENCRYPTED_DATA_INVALID")
            raise TokenRefused(f"decryption failed ({ckr}): the ciphertext, tag, iv or aad is not authentic", ckr) from None

    async def _hmac_key(self, body: dict[str, Any]) -> tuple[HemKey, HashAlg]:
        _no_ecdh_mode(body, "HMAC")
        key = await self.keys.load_for_use(self.kid_of(body))
        hash_alg = key.meta.type.hmac_hash
        if hash_alg is None:
            raise Unsupported(f"key {key.kid.hex()} is {key.meta.type.value}, not an HMAC (SHA2-*/SHA3-*) key", "CKM_SHA256_HMAC")
        return key, hash_alg

    async def hmac(self, body: dict[str, Any]) -> bytes:
        key, hash_alg = await self._hmac_key(body)
        return await self.token.run(self.token.hmac, key.kid, hash_alg, _message(body))

    async def hmac_verify(self, body: dict[str, Any]) -> None:
        key, hash_alg = await self._hmac_key(body)
        message = _message(body)
        mac = _message(body, "mac")
        if not await self.token.run(self.token.hmac_verify, key.kid, hash_alg, message, mac):
            raise TokenRefused("the MAC does not match", "CKR_SIGNATURE_INVALID")

    async def _signing_key(self, body: dict[str, Any], private: bool) -> tuple[HemKey, HashAlg | None]:
        alg = body.get("alg")
        if alg in _EDDSA_VARIANTS:
            raise Unsupported(f"{alg} is not offered by the gateway; use Ed25519 or Ed448 (pure EdDSA)", "CKM_EDDSA parameters")
        if alg not in _ECDSA and alg not in _EDDSA:
            raise InvalidInput(f"alg must be one of {', '.join([*_ECDSA, *_EDDSA, *_EDDSA_VARIANTS])}")
        key = await self.keys.load_for_use(self.kid_of(body))
        key_type = key.meta.type
        if alg in _EDDSA:
            if key_type is not _EDDSA[alg]:
                raise Unsupported(f"{alg} needs an {_EDDSA[alg].value} key; key {key.kid.hex()} is {key_type.value}", "CKM_EDDSA")
            hash_alg = None
        else:
            if not key_type.is_secp:
                raise Unsupported(f"{alg} needs a SECP key; key {key.kid.hex()} is {key_type.value}", "CKM_ECDSA")
            hash_alg = _ECDSA[alg]
        if EXDSA not in key.meta.modes:
            raise Unsupported(f"key {key.kid.hex()} was made without the ExDSA mode: it cannot sign or verify", "CKA_SIGN")
        if private and not key.private:
            raise Unsupported(f"key {key.kid.hex()} is a public key: it can verify, not sign", "CKO_PRIVATE_KEY")
        return key, hash_alg

    async def sign(self, body: dict[str, Any]) -> bytes:
        """ECDSA as raw r||s (JOSE style), or a pure EdDSA signature."""
        key, hash_alg = await self._signing_key(body, private=True)
        return await self.token.run(self.token.sign, key.kid, _message(body), hash_alg)

    async def verify(self, body: dict[str, Any]) -> None:
        key, hash_alg = await self._signing_key(body, private=False)
        message = _message(body)
        signature = _message(body, "sign")
        curve = key.info.curve
        if hash_alg is not None and curve is not None and len(signature) != 2 * curve.field_bytes:
            try:  # a DER ECDSA signature is accepted too
                r, s = decode_dss_signature(signature)
                signature = r.to_bytes(curve.field_bytes, "big") + s.to_bytes(curve.field_bytes, "big")
            except (ValueError, OverflowError):
                raise InvalidInput("sign is neither a raw r||s nor a DER ECDSA signature for this curve") from None
        if not await self.token.run(self.token.verify, key.kid, message, signature, hash_alg):
            raise TokenRefused("the signature does not verify", "CKR_SIGNATURE_INVALID")
