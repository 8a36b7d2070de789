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
fresh view of the token (freshview.py: a short-lived child process), which
destroys every object with that kid (the kid was never given to a client, so
nothing else can own it).  A kid stays pending until a sweep finds
it absent or destroys it; while the token refuses writes, sweeps back off.
Re-initialising the module in the serving process would also refresh its
view, but that would pull sessions from under calls in flight.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from . import freshview
from .settings import TokenSettings

log = logging.getLogger("gateway.token")

FIRST_DELAY: Final = 0.5  # seconds from a failure to the first sweep (failures come in bursts)
MAX_DELAY: Final = 30.0  # back-off cap while sweeps fail (token still read-only)
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
    answer = freshview.ask(settings, "sweep", kids=[k.hex() for k in kids])
    return SweepResult(answer["absent"], answer["destroyed"], answer["failed"])
