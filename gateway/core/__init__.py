"""The core: who may do what, the key models, derivation recipes, the audit trail.

No HTTP here and no pkcs11: the core speaks to tokens through ``gateway.token``.
"""
