"""Which token a new key goes to: the first configured one that can do all its spec needs.

"All" means creating the key, using it (AEAD, signatures) and, for ChaCha20
keys, deriving children from it, because derived keys stay on their parent's
token.  When no token qualifies, the refusal names what each one lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.errors import Unsupported
from gateway.token import Capabilities, HashAlg, SecretType, Token

from .models import UNSUPPORTED, KeySpec


def _refusal(check: Callable[[], object], suffix: str = "") -> str | None:
    try:
        check()
    except Unsupported as exc:
        return exc.mechanism + suffix
    return None


def missing_mechanisms(caps: Capabilities, spec: KeySpec) -> list[str]:
    """PKCS#11 mechanisms (or features) a token lacks to serve ``spec``; empty: it can."""
    if spec in UNSUPPORTED:
        return [UNSUPPORTED[spec][1]]
    found: list[str | None] = []
    if spec is KeySpec.AES_256_GCM:
        found.append(_refusal(lambda: caps.require_secret(SecretType.AES)))
        found.append(None if caps.aes_gcm else "CKM_AES_GCM")
    elif spec is KeySpec.CHACHA20:
        found.append(_refusal(lambda: caps.require_secret(SecretType.CHACHA20)))
        found.append(None if caps.chacha20_poly1305 else "CKM_CHACHA20_POLY1305")
        found.append(_refusal(lambda: caps.require_hkdf(HashAlg.SHA256)))
    else:
        curve = spec.curve
        assert curve is not None
        found.append(_refusal(lambda: caps.require_curve(curve), f" ({curve.value})"))
        if spec is KeySpec.ED25519:
            found.append(None if caps.eddsa else "CKM_EDDSA")
        elif spec is KeySpec.SECP256K1:
            found.append(None if caps.ecdsa else "CKM_ECDSA")
        else:  # C25519: an X25519 key-agreement key
            found.append(_refusal(lambda: caps.require_ecdh(curve), f" ({curve.value})"))
    return [m for m in found if m is not None]


def choose_token(tokens: Iterable[Token], spec: KeySpec) -> Token:
    """The first token (config order) that can serve ``spec``; Unsupported names what is missing."""
    if spec in UNSUPPORTED:
        reason, mechanism = UNSUPPORTED[spec]
        raise Unsupported(f"{spec.value} keys are not supported: {reason}", mechanism)
    lacking: list[tuple[str, list[str]]] = []
    for token in tokens:
        missing = missing_mechanisms(token.capabilities, spec)
        if not missing:
            return token
        lacking.append((token.name, missing))
    if not lacking:
        raise Unsupported(f"no token is configured to hold {spec.value} keys", "token")
    detail = "; ".join(f"token {name!r} lacks {', '.join(missing)}" for name, missing in lacking)
    raise Unsupported(f"no configured token can hold {spec.value} keys: {detail}", lacking[0][1][0])
