"""Gateway-level benchmark: ``gateway serve --workers 2`` driven by ``wrk`` over HTTPS,
against a raw python-pkcs11 loop on the same fresh token, in the same run as the
adapter-level benchmark (``bench.cases``).
"""
