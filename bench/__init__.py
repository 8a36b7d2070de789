"""``make bench``: the token adapter against a raw python-pkcs11 loop, on the same fresh tokens.

Run it with ``python -m bench`` (see ``--help``); results go to
docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.
"""
