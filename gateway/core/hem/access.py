"""Who may do what in the HEM dialect: roles from ``sub``, scopes as HEM matches them.

- Roles: ``U`` a local user, ``M`` master (denied on all key management and
  key use), anything else an external principal (HEM's ExtAuth: a paired
  authenticator's base64 kid; here also service principals of configured
  external issuers), allowed where a user is.
- Scopes: the token's ``scope`` claim (space-separated when an external
  issuer grants several) matches a key-management scope by PREFIX, as the
  firmware does: a required scope ``keymgmt:gen`` is granted by a token scope
  that starts with ``keymgmt:gen``.  Using a key needs EXACTLY
  ``keymgmt:use:<kid>`` (hex compared case-insensitively).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from gateway.errors import Forbidden

USE_PREFIX: Final = "keymgmt:use:"


class Role(enum.Enum):
    USER = "U"
    MASTER = "M"
    EXTERNAL = "ext"

    @classmethod
    def of(cls, sub: str) -> "Role":
        if sub == "U":
            return cls.USER
        if sub == "M":
            return cls.MASTER
        return cls.EXTERNAL


@dataclass(frozen=True)
class Principal:
    """The verified caller of one request."""

    sub: str
    scope: str
    name: str = ""  # the configured user's name, or "<issuer>:<sub>" for external tokens
    external: bool = False

    @property
    def role(self) -> Role:
        return Role.of(self.sub)

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s for s in self.scope.split(" ") if s)

    @property
    def subject(self) -> str:
        """For the audit trail."""
        if self.external:
            return f"ext:{self.name}"
        return f"{self.sub}:{self.name}" if self.name else self.sub


class Operation(enum.Enum):
    """Access-controlled HEM calls and the scopes (prefix match) that allow them."""

    CREATE = ("keymgmt:gen",)
    IMPORT = ("keymgmt:imp",)
    LIST = ("keymgmt:list",)
    SEARCH = ("keymgmt:search", "keymgmt:list")
    GET = ("keymgmt:get", "keymgmt:gen")  # or exactly keymgmt:use:<kid>
    UPDATE = ("keymgmt:upd",)
    DELETE = ("keymgmt:del",)
    # The derive page says keymgmt:ecdh; firmware 1.2.2 accepts derive or gen.
    DERIVE = ("keymgmt:derive", "keymgmt:ecdh", "keymgmt:gen")
    USE = ()  # exactly keymgmt:use:<kid>
    LOGGER = ("logger:get",)

    @property
    def master_allowed(self) -> bool:
        return self is Operation.LOGGER


def _uses(scopes: tuple[str, ...], kid: bytes | None) -> bool:
    if kid is None:
        return False
    wanted = USE_PREFIX + kid.hex()
    return any(s.lower() == wanted for s in scopes)


def check(principal: Principal, operation: Operation, kid: bytes | None = None) -> None:
    """Raise Forbidden (403) unless ``principal`` may perform ``operation`` (on ``kid``)."""
    if principal.role is Role.MASTER and not operation.master_allowed:
        raise Forbidden("the master role (sub M) may not manage or use keys")
    scopes = principal.scopes
    if operation is Operation.USE:
        if not _uses(scopes, kid):
            shown = kid.hex() if kid is not None else "<kid>"
            raise Forbidden(f"this call needs the scope keymgmt:use:{shown} exactly")
        return
    if any(s.startswith(required) for s in scopes for required in operation.value):
        return
    if operation is Operation.GET and _uses(scopes, kid):
        return
    wanted = " or ".join(operation.value)
    raise Forbidden(f"this call needs a scope starting with {wanted}")
