"""The token adapter: the only package that talks PKCS#11.

The rest of the gateway sees ``TokenSet``/``Token`` and the typed vocabulary
in ``types``; every blocking call runs on a token's worker threads.
"""

from .capabilities import Capabilities
from .settings import TokenSettings
from .token import Token
from .tokenset import TokenSet
from .types import Curve, DataObject, EcdhKdf, HashAlg, KeyClass, KeyInfo, SecretSpec, SecretType, Usage

__all__ = [
    "Capabilities",
    "Curve",
    "DataObject",
    "EcdhKdf",
    "HashAlg",
    "KeyClass",
    "KeyInfo",
    "SecretSpec",
    "SecretType",
    "Token",
    "TokenSet",
    "TokenSettings",
    "Usage",
]
