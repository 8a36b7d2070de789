"""Removing what a failed creating call may have left in the token.

A creating call (C_DeriveKey, C_GenerateKey*, C_CreateObject) that fails is
supposed to leave nothing, but a module that keeps objects in files can fail
half-way: SoftHSM2 writes a new object's file in two steps, and when the
second one fails (the token folder turned read-only, the disk filled up) its
clean-up cannot remove the file either.  What stays carries the new kid and
its label, and the process that made it never sees it again: SoftHSM2 marks
the object invalid in that process and does not read the file back until the
module is initialised anew.  Every other process, and every later start, does
see it.

So each kid of a failed creating call is remembered and swept later from a
fresh view of the token: a short-lived child process initialises the module,
logs in, and destroys every object with that kid (the kid was never given to a
client, so nothing else can own it).  A kid stays pending until a sweep finds
it absent or destroys it; while the token refuses writes, sweeps back off.
Re-initialising the module in the serving process would also refresh its
view, but that would pull sessions from under calls in flight.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from ctypes import byref, c_ulong
from dataclasses import dataclass
from typing import Any, Final

from .settings import TokenSettings

log = logging.getLogger("gateway.token")

FIRST_DELAY: Final = 0.5  # seconds from a failure to the first sweep (failures come in bursts)
MAX_DELAY: Final = 30.0  # back-off cap while sweeps fail (token still read-only)
CHILD_TIMEOUT: Final = 120.0  # a child initialises the module: SoftHSM2 reads every object file
MAX_PENDING: Final = 100_000  # bounded memory; the oldest kids are dropped past this (logged)


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did, by kid (hex)."""

    absent: list[str]
    destroyed: list[str]
    failed: list[str]

    @property
    def settled(self) -> list[str]:
        return self.absent + self.destroyed


class LeftoverSweeper:
    """Kids of failed creating calls on one token, swept from a fresh process until settled."""

    def __init__(self, settings: TokenSettings, *, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.settings = settings
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._pending: OrderedDict[bytes, None] = OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.destroyed = 0  # objects removed so far (for metrics and tests)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def add(self, kid: bytes) -> None:
        """Remember ``kid`` (its creating call failed) and make sure a sweep will run."""
        with self._cond:
            if self._closed:
                return
            self._pending[kid] = None
            if len(self._pending) > MAX_PENDING:
                dropped, _ = self._pending.popitem(last=False)
                log.error("token %s: too many failed creations to track; %s is no longer swept",
                          self.settings.name, dropped.hex())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"leftovers-{self.settings.name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_settled(self, timeout: float) -> bool:
        """Block until nothing is pending (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending or self._closed, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop sweeping; a sweep under way gets ``timeout`` seconds to finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._pending:
            log.warning("token %s: stopped with %d failed creation(s) not yet swept; the next start does not "
                        "know them", self.settings.name, len(self._pending))

    def _loop(self) -> None:
        delay = self.first_delay
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed, delay)
                if self._closed or not self._pending:
                    self._thread = None
                    self._cond.notify_all()
                    return
                kids = list(self._pending)
            try:
                result = sweep(self.settings, kids)
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried later, never fatal
                log.warning("token %s: sweeping %d failed creation(s) failed (%s); trying again in %.0f s",
                            self.settings.name, len(kids), exc, min(delay * 2, self.max_delay))
                delay = min(delay * 2, self.max_delay)
                continue
            if result.destroyed:
                log.warning("token %s: removed what %d failed creation(s) had left in the token: %s",
                            self.settings.name, len(result.destroyed), ", ".join(result.destroyed[:20]))
            with self._cond:
                self.destroyed += len(result.destroyed)
                for kid_hex in result.settled:
                    self._pending.pop(bytes.fromhex(kid_hex), None)
                self._cond.notify_all()
            delay = min(delay * 2, self.max_delay) if result.failed else self.first_delay


def sweep(settings: TokenSettings, kids: list[bytes]) -> SweepResult:
    """Destroy every token object with one of ``kids``, from a child process (a fresh view)."""
    request = {
        "module": settings.module, "label": settings.label, "serial": settings.serial, "pin": settings.pin,
        "init_args": settings.init_args, "environment": settings.environment, "kids": [k.hex() for k in kids],
    }
    env = {**os.environ, **settings.environment}
    proc = subprocess.run([sys.executable, "-m", "gateway.token.leftovers"], input=json.dumps(request),
                          capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    answer = json.loads(proc.stdout)
    return SweepResult(answer["absent"], answer["destroyed"], answer["failed"])


# --------------------------------------------------------------------------- the child process


def _destroy_kids(request: dict[str, Any]) -> dict[str, list[str]]:
    from .cki import CKRError, Template
    from .constants import CKA, CKF_RW_SESSION, CKF_SERIAL_SESSION, CKR, CKU_USER
    from .module import Module

    module = Module(request["module"], request["init_args"], request["environment"])
    slot, _ = module.find_slot(request["label"], request["serial"])
    handle = c_ulong()
    module.fn("C_OpenSession", slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, None, None, byref(handle))
    session = handle.value
    if request["pin"] is not None:
        pin = request["pin"].encode()
        rv = module.fn.raw("C_Login")(session, CKU_USER, pin, len(pin))
        if rv not in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN):
            raise CKRError(rv, "C_Login")
    out: dict[str, list[str]] = {"absent": [], "destroyed": [], "failed": []}
    for kid_hex in request["kids"]:
        tpl = Template({CKA.TOKEN: True, CKA.ID: bytes.fromhex(kid_hex)})
        module.fn("C_FindObjectsInit", session, tpl.pointer, tpl.count)
        found = (c_ulong * 16)()
        count = c_ulong()
        try:
            module.fn("C_FindObjects", session, found, 16, byref(count))
        finally:
            module.fn.raw("C_FindObjectsFinal")(session)
        handles = list(found[: count.value])
        if not handles:
            out["absent"].append(kid_hex)
            continue
        rvs = [module.fn.raw("C_DestroyObject")(session, h) for h in handles]
        ok = all(rv in (CKR.OK, CKR.OBJECT_HANDLE_INVALID) for rv in rvs)
        out["destroyed" if ok else "failed"].append(kid_hex)
    module.fn.raw("C_Logout")(session)
    module.fn.raw("C_CloseSession")(session)
    module.fn.raw("C_Finalize")(None)
    return out


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        answer = _destroy_kids(request)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which tries again later
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
