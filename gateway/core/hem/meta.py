"""HEM key metadata, kept in the key object's CKA_LABEL as compact JSON.

Storing it there makes a key and its metadata one PKCS#11 object, created in
one call (nothing half-made on failure) and seen at once by every process on
the token.  Objects whose label does not decode are not HEM keys: the HEM
dialect neither lists nor uses them (that protects the gateway's own keys).

Label JSON members: ``hem`` (format version), ``l`` label, ``t`` type,
``m`` modes, ``c``/``u`` created/updated (Unix seconds), ``d`` descr (base64),
``o`` origin (gen|imp|der), and for derived keys ``b`` base kid, ``p`` peer
(the ext_kid, or the kid an import of the peer's public key would get) and
``r`` the recipe.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Final

from gateway.core.hem.types import KeyType
from gateway.errors import InvalidInput

FORMAT: Final = 1
MAX_LABEL_CHARS: Final = 32
MAX_DESCR_BYTES: Final = 64
_PRINTABLE: Final = re.compile(r"[\x20-\x7e]+")
_KID_RE: Final = re.compile(r"[0-9a-fA-F]{32}")

ORIGIN_GENERATED: Final = "gen"
ORIGIN_IMPORTED: Final = "imp"
ORIGIN_DERIVED: Final = "der"


@dataclass(frozen=True)
class KeyMeta:
    label: str
    type: KeyType
    modes: tuple[str, ...]
    created: int
    updated: int
    descr: bytes = b""
    origin: str = ORIGIN_GENERATED
    base: str | None = None
    peer: str | None = None
    recipe: str | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {
            "hem": FORMAT, "l": self.label, "t": self.type.value, "m": ",".join(self.modes),
            "c": self.created, "u": self.updated, "o": self.origin,
        }
        if self.descr:
            data["d"] = base64.b64encode(self.descr).decode("ascii")
        for name, value in (("b", self.base), ("p", self.peer), ("r", self.recipe)):
            if value is not None:
                data[name] = value
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "KeyMeta | None":
        """The metadata in a CKA_LABEL, or None when the object is not a HEM key."""
        if not text.startswith('{"hem"'):
            return None
        try:
            data = json.loads(text)
            if data.get("hem") != FORMAT:
                return None
            modes = tuple(m for m in str(data.get("m", "")).split(",") if m)
            return cls(
                label=str(data["l"]), type=KeyType(data["t"]), modes=modes,
                created=int(data["c"]), updated=int(data["u"]),
                descr=base64.b64decode(data.get("d", "")), origin=str(data.get("o", ORIGIN_GENERATED)),
                base=data.get("b"), peer=data.get("p"), recipe=data.get("r"),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None

    def updated_with(self, label: str, descr: bytes | None, now: int) -> "KeyMeta":
        return replace(self, label=label, descr=self.descr if descr is None else descr, updated=now)


# --------------------------------------------------------------------------- request field parsing


def b64decode(value: object, name: str) -> bytes:
    """Standard or URL-safe base64, padding optional (as the device accepts)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a base64 string")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_label(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"label is required: 1 to {MAX_LABEL_CHARS} printable ASCII characters")
    if len(value) > MAX_LABEL_CHARS or not _PRINTABLE.fullmatch(value):
        raise InvalidInput(f"label must be 1 to {MAX_LABEL_CHARS} printable ASCII characters, got {len(value)} characters")
    return value


def parse_descr(value: object) -> bytes | None:
    if value is None:
        return None
    descr = b64decode(value, "descr")
    if len(descr) > MAX_DESCR_BYTES:
        raise InvalidInput(f"descr must decode to at most {MAX_DESCR_BYTES} bytes, got {len(descr)}")
    return descr


def parse_kid(value: object, name: str = "kid") -> bytes:
    if not isinstance(value, str) or not _KID_RE.fullmatch(value):
        raise InvalidInput(f"{name} must be 32 hex characters (16 bytes)")
    return bytes.fromhex(value)
