"""Keeping SoftHSM2's token file whole for the processes that read it.

SoftHSM2 keeps a token's label, flags and PIN blobs in one file
(``token.object``) and rewrites it at every ``C_Login``, truncating it before it
takes its own file lock.  A process that reads the file meanwhile
(``C_Initialize``, ``C_GetTokenInfo``, its own ``C_Login``) keeps what it read
for as long as the module stays initialised: a token without a user PIN or
without flags, or one marked broken, on which every later token-object create
answers ``CKR_GENERAL_ERROR``.  Seen when four processes opened one token at
once (docs/reliability.md).

So every gateway process holds one exclusive ``flock`` per token folder around
those calls; they are rare (start, recovery, a new session).  A process that
is not ours (softhsm2-util, pkcs11-tool) does not take the lock, and for that
the adapter still re-initialises the module after a login that failed the way
a torn read fails.  Other modules keep no such file and get no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .scangate import softhsm_lock_path

log = logging.getLogger("gateway.token")


class TokenFileLock:
    """Exclusive across threads and processes on one SoftHSM2 token folder; a no-op without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread_lock = threading.Lock()  # flock is per open file, shared by our threads
        self._fd: int | None = None

    @classmethod
    def for_softhsm(cls, environment: dict[str, str]) -> TokenFileLock:
        return cls(softhsm_lock_path(environment, ".tokenfile"))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        with self._thread_lock:
            fd = self._open()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        if self._fd is None and self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.warning("cannot open the token file lock %s (%s): logins are not kept apart from "
                            "other processes' reads of SoftHSM2's token file", self.path, exc)
                self.path = None
        return self._fd
