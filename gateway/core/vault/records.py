"""How vaults and key metadata are written into the token (there is no other database).

A key's metadata is compact JSON in its own CKA_LABEL, so the key and its
metadata are created by one PKCS#11 call and every process sharing the token
sees both at once; its CKA_ID is the key UUID's 16 bytes.  Vault records are
JSON too: the value of a CKO_DATA object where a token stores those, else the
label of a tiny usage-less secret key object (see ``store``).  Objects whose
label is not ours (other applications, other dialects) decode to None.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from gateway.token import KeyInfo

from .models import DeriveRecipe, Kdf, KeySpec, KeyType, KeyUsage, Vault, VaultKey, rfc3339
from .owner import Owner

log = logging.getLogger(__name__)

KEY_RECORD: Final = "vault-key/1"
VAULT_RECORD: Final = "vault/1"


def _dumps(document: dict[str, Any]) -> str:
    # ASCII only: some HSMs are picky about label bytes; compact: labels are stored per object.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True)


def _loads(text: str | bytes, kind: str) -> dict[str, Any] | None:
    if not text or (text[:1] not in ("{", b"{")):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("k") != kind:
        return None
    return document


def key_label(key: VaultKey) -> str:
    document: dict[str, Any] = {
        "k": KEY_RECORD,
        "vault_id": str(key.vault_id),
        "name": key.name,
        "description": key.description,
        "spec": key.spec.value,
        "type": key.type.value,
        "usage": key.usage.value,
        "created_at": rfc3339(key.created_at),
    }
    if key.derivation is not None:
        d = key.derivation
        document["derivation"] = {"kdf": d.kdf.value, "parent_id": str(d.parent_id), "nonce": d.nonce, "context": d.context}
    return _dumps(document)


def key_from_info(info: KeyInfo) -> VaultKey | None:
    """The vault key stored as ``info``, or None when the object is not one."""
    document = _loads(info.label, KEY_RECORD)
    if document is None or len(info.kid) != 16:
        return None
    try:
        derivation = None
        if "derivation" in document:
            d = document["derivation"]
            derivation = DeriveRecipe(UUID(d["parent_id"]), int(d["nonce"]), str(d["context"]), Kdf(d["kdf"]))
        return VaultKey(
            id=UUID(bytes=info.kid),
            vault_id=UUID(document["vault_id"]),
            type=KeyType(document["type"]),
            usage=KeyUsage(document["usage"]),
            spec=KeySpec(document["spec"]),
            name=str(document["name"]),
            description=str(document["description"]),
            created_at=datetime.fromisoformat(document["created_at"]),
            public_key=info.public_key,
            derivation=derivation,
            token_name=info.token_name,
        )
    except (KeyError, TypeError, ValueError):
        log.warning("token %s: key %s has a malformed vault label; ignored", info.token_name, info.kid.hex())
        return None


def vault_record(vault: Vault) -> str:
    return _dumps({
        "k": VAULT_RECORD,
        "id": str(vault.id),
        "owner": str(vault.owner),
        "name": vault.name,
        "description": vault.description,
        "created_at": rfc3339(vault.created_at),
    })


def vault_from_record(text: str | bytes) -> Vault | None:
    document = _loads(text, VAULT_RECORD)
    if document is None:
        return None
    try:
        return Vault(
            id=UUID(document["id"]),
            owner=Owner.parse(document["owner"]),
            name=str(document["name"]),
            description=str(document["description"]),
            created_at=datetime.fromisoformat(document["created_at"]),
        )
    except (KeyError, TypeError, ValueError):
        log.warning("a vault record is malformed; ignored")
        return None
