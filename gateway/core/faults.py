"""Fault injection for the reliability suite (tests/stress): testing only, never in production.

Reached only through the routes of ``gateway.http.faults``, which exist only when the
config says ``[server] fault_hooks = true`` (off by default).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.token import Token

log = logging.getLogger(__name__)


def close_all_sessions(token: Token) -> int:
    """Close every PKCS#11 session this process has on ``token``, as if from outside; blocking.

    Between calls, never under one: SoftHSM2 frees a session's state in
    ``C_CloseAllSessions`` even while another thread is inside a call on it (a
    use-after-free that can abort the process).  So first every session of the
    pool is taken out of circulation (calls in flight finish and hand theirs
    back; new calls wait), then ``C_CloseAllSessions`` runs on the token's slot,
    then the dead sessions go back to the pool.  The next calls find them gone
    (``CKR_SESSION_HANDLE_INVALID``) and the adapter recovers: it opens new
    sessions, logs in again and retries.  Returns how many sessions were held.
    """
    pool = token.pool
    held = []
    try:
        for _ in range(pool.size):
            held.append(pool.acquire())
        rv = token.module.fn.raw("C_CloseAllSessions")(pool.slot)
        log.warning("fault hook: closed every session of token %s (C_CloseAllSessions returned %#x)", token.name, rv)
    finally:
        for session in held:
            pool.release(session)
    return len(held)
