"""Request ids: unique, cheap, never secret.

A per-process random prefix and a counter, instead of a ``uuid4()`` (a read
of the kernel's random source, and a release of the GIL) on the event loop for
every request.  Ids only need to be unique across workers and instances: 64
random bits per process, renewed after a fork, do that.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter: itertools.count[int] = itertools.count()


def _reset() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_reset()
os.register_at_fork(after_in_child=_reset)


def new_request_id() -> str:
    """32 hex digits, like a uuid4's, so log and audit tooling sees one shape."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"
