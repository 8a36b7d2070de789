"""Keeping object scans and other processes' writes apart, on SoftHSM2.

SoftHSM2 re-reads its token folder (lists it, and stats every object file)
whenever a process touches an object after another process changed the token.
A scan (``C_FindObjectsInit``, or a listing that reads every object) touches
every object, so while another process keeps creating keys, nearly every step
of the scan re-reads the folder: with a few thousand keys and a busy second
worker, one lookup took over 30 seconds (the reliability suite's "sessions
closed" fault, where every cached handle is void at once).  Alone, the same
scan takes a fraction of a second.

So every process on the token agrees, through ``flock`` on one lock file per
token folder: a call that changes token objects holds the lock shared (writers
do not wait for each other); a process scanning holds it exclusively, for the
length of its scans (its threads scan side by side).  Calls that make or
destroy session objects only (the ECDH secret of ``/api/crypto/ecdh``) touch
no token file and take no lock (cki.py tells them apart by CKA_TOKEN).  A
second lock file is the turnstile that keeps a stream of writers from starving
a scan: a scan takes it first, writers pass through it.  Writer threads have
their own descriptors, because flock locks belong to an open file and would
otherwise be shared by every thread of the process.

Scans are rare on the hot path (handles are cached per process), so writers
pay four cheap system calls each.  Other modules do not re-read anything per
object, and get no gate.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("gateway.token")

DEFAULT_SOFTHSM2_CONF = "/etc/softhsm/softhsm2.conf"


def softhsm_token_dir(environment: dict[str, str]) -> str | None:
    """The token folder SoftHSM2 will use (``directories.tokendir`` of its config)."""
    conf = environment.get("SOFTHSM2_CONF") or os.environ.get("SOFTHSM2_CONF") or DEFAULT_SOFTHSM2_CONF
    try:
        text = Path(conf).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "directories.tokendir":
            return os.path.realpath(value.strip())
    return None


def softhsm_shared_path(environment: dict[str, str], suffix: str) -> Path | None:
    """A file shared by every process on the same SoftHSM2 token folder (None: folder unknown)."""
    folder = softhsm_token_dir(environment)
    if folder is None:
        return None
    digest = hashlib.sha256(folder.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pkcs11-gateway-{digest}{suffix}"


def softhsm_lock_path(environment: dict[str, str], suffix: str) -> Path | None:
    """A lock file shared by every process on the same SoftHSM2 token folder (None: folder unknown)."""
    return softhsm_shared_path(environment, f"{suffix}.lock")


class _ThreadFds:
    """One thread's lock descriptors, closed when the thread ends (its thread-local goes)."""

    def __init__(self, fds: tuple[int, int] | None) -> None:
        self.fds = fds

    def __del__(self) -> None:
        for fd in self.fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)


class ScanGate:
    """Shared for writes, exclusive for scans, across threads and processes on one token folder.

    Scans of one process share one exclusive hold (threads join a hold younger
    than ``JOIN_SECONDS``, so a stream of scans cannot starve every writer).
    """

    JOIN_SECONDS = 0.5

    def __init__(self, lock_path: Path | None) -> None:
        self.lock_path = lock_path
        self._local = threading.local()
        self._cond = threading.Condition()
        self._process_fds: tuple[int, int] | None = None
        self._scanners = 0
        self._held_since: float | None = None  # the process's exclusive hold
        self._acquiring = False

    @classmethod
    def for_softhsm(cls, environment: dict[str, str]) -> ScanGate:
        path = softhsm_lock_path(environment, "")
        if path is None:
            log.warning("SoftHSM2's token folder is unknown (no readable softhsm2.conf): object scans are not "
                        "kept apart from other processes' writes")
        return cls(path)

    def _open(self) -> tuple[int, int] | None:
        if self.lock_path is None:
            return None
        try:
            turnstile = os.open(f"{self.lock_path}.turnstile", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                main = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                os.close(turnstile)
                raise
        except OSError as exc:
            log.warning("cannot open the scan lock %s (%s): scans are not kept apart from other processes' "
                        "writes", self.lock_path, exc)
            self.lock_path = None
            return None
        return turnstile, main

    def _thread_fds(self) -> tuple[int, int] | None:
        holder = getattr(self._local, "fds", None)
        if holder is None:
            holder = self._local.fds = _ThreadFds(self._open())
        return holder.fds

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        fds = self._thread_fds() if not self._depth() else None  # inside a scan: already exclusive
        if fds is None:
            yield
            return
        turnstile, main = fds
        fcntl.flock(turnstile, fcntl.LOCK_SH)  # waits while a scan is waiting or running
        try:
            fcntl.flock(main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def scanning(self) -> Iterator[None]:
        depth = self._depth()
        if depth or self.lock_path is None:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        if not self._join():
            yield
            return
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            self._leave()

    def _join(self) -> bool:
        """Become one of the process's scanners, taking the exclusive hold if nobody has it."""
        with self._cond:
            while True:
                held = self._held_since
                if held is not None and time.monotonic() - held < self.JOIN_SECONDS:
                    self._scanners += 1
                    return True
                if held is None and not self._acquiring:
                    self._acquiring = True
                    break
                self._cond.wait()
        try:
            if self._process_fds is None:
                self._process_fds = self._open()
            fds = self._process_fds
            if fds is not None:
                fcntl.flock(fds[0], fcntl.LOCK_EX)  # new writers wait from here on
                try:
                    fcntl.flock(fds[1], fcntl.LOCK_EX)  # writers in flight finish
                except BaseException:
                    fcntl.flock(fds[0], fcntl.LOCK_UN)
                    raise
        finally:
            with self._cond:
                self._acquiring = False
                self._cond.notify_all()
        if fds is None:
            return False
        with self._cond:
            self._held_since = time.monotonic()
            self._scanners += 1
            self._cond.notify_all()
        return True

    def _leave(self) -> None:
        with self._cond:
            self._scanners -= 1
            if self._scanners == 0 and self._process_fds is not None:
                fcntl.flock(self._process_fds[1], fcntl.LOCK_UN)
                fcntl.flock(self._process_fds[0], fcntl.LOCK_UN)
                self._held_since = None
                self._cond.notify_all()
