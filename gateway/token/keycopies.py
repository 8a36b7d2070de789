"""Session copies of the private keys ECDH derivations start from, on SoftHSM2.

SoftHSM2 keeps every token object in a file and, on each use of one, checks
that file again: deriving from a token-object base key costs a row of system
calls that a session object (kept in the process's memory) does not, about
a fifth of a P-256 ECDH through the adapter (docs/architecture.md).  And after another process
changed the token, the first touch of any token object re-reads the whole
token folder (over 100 ms at 10,000 keys), which session objects never do.

So the ECDH base key is used through a session copy (``C_CopyObject`` with
``CKA_TOKEN`` false) once the process has known it for ``COPY_AFTER_SECONDS``.
The copy keeps every other attribute, ``CKA_SENSITIVE`` and
``CKA_EXTRACTABLE`` included (``C_CopyObject`` can only tighten them), lives
in this process only and goes with its session.

A copy does not notice its token object going away, so it is used only while
that object is known to exist:

* every gateway process on the token counts the key objects it destroys in one
  shared counter (:class:`DeletionCounter`, a small file next to the scan
  lock, mapped into memory: reading it costs no system call).  A copy is used
  only while the counter shows what it showed when the token object was last
  confirmed, and the counter is bumped after the objects are destroyed and
  before the deletion is answered, so a key deleted through any gateway
  process is refused by every other from then on;
* a copy is confirmed again after ``TRUST_SECONDS`` even without a count, for
  deletions by other programs (softhsm2-util, pkcs11-tool);
* a copy made in sessions that were closed since (a recovery) is never used
  again: the entry carries the sessions' generation.

Other modules get no copies: NSS softoken reads its database on every call
either way, and an HSM's token objects cost nothing extra to use.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .scangate import softhsm_shared_path

log = logging.getLogger("gateway.token")

TRUST_SECONDS: Final = 1.0  # same window as a cached handle's (token.py _TRUST_SECONDS)
COPY_AFTER_SECONDS: Final = 2.0
MAX_COPIES: Final = 256  # base keys with a copy per process; the least recently used go first
_COUNTER: Final = struct.Struct("<Q")

Generation = tuple[int, int]


class DeletionCounter:
    """How many key objects gateway processes destroyed on one token folder, shared through a mapped file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER.size:
                os.ftruncate(fd, _COUNTER.size)  # zeros; two processes growing it at once is harmless
            self._map = mmap.mmap(fd, _COUNTER.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._lock = threading.Lock()  # flock does not exclude threads sharing one descriptor

    @classmethod
    def for_softhsm(cls, environment: dict[str, str]) -> DeletionCounter | None:
        path = softhsm_shared_path(environment, ".deletions")
        if path is None:
            return None  # ScanGate.for_softhsm has said why
        try:
            return cls(path)
        except (OSError, ValueError) as exc:
            log.warning("cannot open the deletion counter %s (%s): this process uses keys as token objects, and "
                        "other gateway processes may use a key it deletes for up to %g s more; run every gateway "
                        "process on this token as one user so that each can open the file", path, exc, TRUST_SECONDS)
            return None

    def value(self) -> int:
        # An aligned 8-byte read of a count that only grows: a reader racing a bump sees
        # the old or the new value, and either way confirms at this use or the next.
        return int(_COUNTER.unpack_from(self._map, 0)[0])

    def bump(self) -> None:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # other processes bump too
            try:
                _COUNTER.pack_into(self._map, 0, self.value() + 1)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError, BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclass
class _Copy:
    handle: int  # the session copy, or the token object itself when the module would not copy it
    source: int  # the token object's handle
    generation: Generation  # of the sessions the copy was made in
    count: int  # the deletion counter when the token object was last confirmed
    confirmed: float  # time.monotonic() of that confirmation


class KeyCopies:
    """This process's copies by kid; the Token makes, confirms and destroys them."""

    def __init__(self, counter: DeletionCounter, limit: int = MAX_COPIES) -> None:
        self.counter = counter
        self.limit = limit
        self._copies: OrderedDict[bytes, _Copy] = OrderedDict()
        # Copies dropped while no session was at hand, destroyed at the next copy (only
        # those of the sessions then open: older ones went with their sessions).
        self._dead: list[tuple[int, Generation]] = []
        self._lock = threading.Lock()

    def usable(self, kid: bytes, source: int, generation: Generation, count: int, now: float) -> int | None:
        """The copy to use, if the token object needs no confirmation."""
        with self._lock:
            entry = self._copies.get(kid)
            if entry is None or entry.source != source or entry.generation != generation:
                return None
            if entry.count != count or now - entry.confirmed >= TRUST_SECONDS:
                return None
            self._copies.move_to_end(kid)
            return entry.handle

    def confirmed(self, kid: bytes, source: int, generation: Generation, count: int, now: float) -> int | None:
        """The token object was just confirmed: its copy, if it still has one, is good again."""
        with self._lock:
            entry = self._copies.get(kid)
            if entry is None:
                return None
            if entry.source != source or entry.generation != generation:
                self._drop(kid)
                return None
            entry.count, entry.confirmed = count, now
            self._copies.move_to_end(kid)
            return entry.handle

    def add(self, kid: bytes, handle: int, source: int, generation: Generation, count: int, now: float) -> None:
        with self._lock:
            if kid in self._copies:
                self._drop(kid)
            self._copies[kid] = _Copy(handle, source, generation, count, now)
            while len(self._copies) > self.limit:
                self._drop(next(iter(self._copies)))

    def forget(self, kid: bytes) -> None:
        with self._lock:
            if kid in self._copies:
                self._drop(kid)

    def take_dead(self, generation: Generation) -> list[int]:
        with self._lock:
            dead, self._dead = self._dead, []
        return [handle for handle, made_in in dead if made_in == generation]

    def __len__(self) -> int:
        return len(self._copies)

    def _drop(self, kid: bytes) -> None:
        entry = self._copies.pop(kid)
        if entry.handle != entry.source:
            self._dead.append((entry.handle, entry.generation))
