"""Who owns a vault: the application, else the organization, else the user of the JWT.

Provide's tokens name the caller in ``sub`` (``application:<uuid>``,
``organization:<uuid>`` or ``user:<uuid>``) and may carry ``prvd``
claims (``application_id``, ``organization_id``, ``user_id``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from gateway.errors import Unauthorized

NO_OWNER_MESSAGE: Final = "unauthorized"  # Provide's exact answer


class OwnerKind(enum.Enum):
    APPLICATION = "application"
    ORGANIZATION = "organization"
    USER = "user"


@dataclass(frozen=True)
class Owner:
    kind: OwnerKind
    id: UUID

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> "Owner":
        kind, _, ident = text.partition(":")
        return cls(OwnerKind(kind), UUID(ident))


@dataclass(frozen=True)
class Principal:
    """The ids a verified token names; ``owner`` is the one that owns what it creates."""

    application_id: UUID | None = None
    organization_id: UUID | None = None
    user_id: UUID | None = None

    @property
    def owner(self) -> Owner:
        for kind, ident in ((OwnerKind.APPLICATION, self.application_id),
                            (OwnerKind.ORGANIZATION, self.organization_id),
                            (OwnerKind.USER, self.user_id)):
            if ident is not None:
                return Owner(kind, ident)
        raise Unauthorized(NO_OWNER_MESSAGE)


def _uuid(value: Any) -> UUID | None:
    if not isinstance(value, str):
        return None
    try:
        ident = UUID(value)
    except ValueError:
        return None
    return None if ident.int == 0 else ident  # the nil UUID names nobody


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The ids in ``sub`` and ``prvd``; a token whose two sources disagree is refused."""
    ids: dict[OwnerKind, UUID | None] = {kind: None for kind in OwnerKind}
    prvd = claims.get("prvd")
    if isinstance(prvd, Mapping):
        for kind in OwnerKind:
            ids[kind] = _uuid(prvd.get(f"{kind.value}_id"))
    sub = claims.get("sub")
    if isinstance(sub, str) and ":" in sub:
        prefix, _, rest = sub.partition(":")
        sub_kind = next((k for k in OwnerKind if k.value == prefix), None)
        ident = _uuid(rest)
        if sub_kind is not None and ident is not None:
            if ids[sub_kind] is not None and ids[sub_kind] != ident:
                raise Unauthorized(f"unauthorized: sub and prvd.{sub_kind.value}_id name different {sub_kind.value}s")
            ids[sub_kind] = ident
    return Principal(ids[OwnerKind.APPLICATION], ids[OwnerKind.ORGANIZATION], ids[OwnerKind.USER])
