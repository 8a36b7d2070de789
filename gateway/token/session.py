"""A bounded pool of logged-in PKCS#11 sessions for one token.

One session is used by one thread at a time (PKCS#11 sessions carry
operation state).  Each session remembers the generation it was opened in;
after a reconnect, sessions of older generations are dropped on release
instead of going back to the pool.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import byref
from dataclasses import dataclass

from .cki import CKRError
from .constants import CKF_RW_SESSION, CKF_SERIAL_SESSION, CKR, CKU_USER
from .module import Module


@dataclass
class Session:
    handle: int
    generation: tuple[int, int]
    broken: bool = False


@dataclass(frozen=True)
class PoolStats:
    size: int
    open: int
    in_use: int
    waiting: int


class SessionPool:
    def __init__(self, module: Module, size: int, pin: str | None, login_required: bool) -> None:
        self.module = module
        self.size = size
        self._pin = pin.encode() if pin is not None else None
        self.login_required = login_required
        self._cond = threading.Condition()
        self._idle: list[Session] = []
        self._open = 0
        self._waiting = 0
        self.slot = -1
        self.generation: tuple[int, int] = (module.generation, 0)

    def open_session(self) -> Session:
        handle = ctypes.c_ulong()
        self.module.fn("C_OpenSession", self.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, None, None, byref(handle))
        if self.login_required and self._pin is not None:
            # Login is per application; later sessions see USER_ALREADY_LOGGED_IN.  A login
            # rewrites SoftHSM2's token file (tokenfile.py).
            with self.module.token_file.held():
                rv = self.module.fn.raw("C_Login")(handle.value, CKU_USER, self._pin, len(self._pin))
            if rv not in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN):
                self.module.fn.raw("C_CloseSession")(handle.value)
                raise CKRError(rv, "C_Login")
        return Session(handle.value, self.generation)

    def acquire(self) -> Session:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    break
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
        try:
            return self.open_session()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def release(self, session: Session) -> None:
        with self._cond:
            if session.broken or session.generation != self.generation:
                self._open -= 1
                stale = True
            else:
                self._idle.append(session)
                stale = False
            self._cond.notify()
        if stale and session.generation[0] == self.module.generation:
            self.module.fn.raw("C_CloseSession")(session.handle)  # best effort

    def reset(self, slot: int, token_generation: int) -> None:
        """Forget every session (after the module or the token dropped them)."""
        with self._cond:
            self._open -= len(self._idle)
            self._idle.clear()
            self.slot = slot
            self.generation = (self.module.generation, token_generation)
            self._cond.notify_all()

    def add_idle(self, session: Session) -> None:
        with self._cond:
            self._open += 1
            self._idle.append(session)
            self._cond.notify()

    def close_all(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for session in idle:
            if self.login_required:
                self.module.fn.raw("C_Logout")(session.handle)
            self.module.fn.raw("C_CloseSession")(session.handle)

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(self.size, self._open, self._open - len(self._idle), self._waiting)
