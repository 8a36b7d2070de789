"""The Provide Vault dialect's core: vaults and keys owned by a JWT's caller, kept in the tokens.

See docs/vault.md.  ``service.VaultService`` is the entry point; ``owner``
turns verified claims into an owner; ``placement`` picks the token for a new
key; ``records`` is how vaults and key metadata are stored in the tokens.
"""

from .models import DeriveRecipe, Kdf, KeySpec, KeyType, KeyUsage, Vault, VaultKey, rfc3339
from .owner import Owner, OwnerKind, Principal, principal_from_claims
from .service import DeriveRequest, KeyRequest, VaultService, paginate

__all__ = [
    "DeriveRecipe",
    "DeriveRequest",
    "Kdf",
    "KeyRequest",
    "KeySpec",
    "KeyType",
    "KeyUsage",
    "Owner",
    "OwnerKind",
    "Principal",
    "Vault",
    "VaultKey",
    "VaultService",
    "paginate",
    "principal_from_claims",
    "rfc3339",
]
