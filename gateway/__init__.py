"""PKCS#11 key-derivation gateway: a REST front-end whose derivations happen inside the token."""

__version__ = "0.1.0"
