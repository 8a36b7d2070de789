"""Catching up with objects other processes made, before saying "not there".

SoftHSM2 can hide objects another process created from this one (freshview.py
says how): only after this process has created or destroyed an object itself,
and only until another process changes the token again.  So the module's
function list counts this process's object-changing calls, and when a lookup
finds nothing after such a call, a fresh-view child nudges the token and the
lookup runs once more.  With no own change since the last nudge the view is
current and a miss is a miss, at no cost.

A nudge costs one child process (about 0.2 s) and is shared: lookups that miss
while one runs wait for the next, which serves all of them.  Key listings catch
up the same way, at most every ``LIST_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Final

from . import freshview
from .settings import TokenSettings

log = logging.getLogger("gateway.token")

LIST_SECONDS: Final = 5.0


class StaleViews:
    """Nudges for one token, shared across its worker threads.

    ``writes`` returns how many object-changing calls this process has made so
    far (the module's count; over-counting only costs a nudge).  ``enabled`` is
    off for modules not known to hide objects (only SoftHSM2 is).
    """

    def __init__(self, settings: TokenSettings, writes: Callable[[], int], *, enabled: bool = True,
                 list_seconds: float = LIST_SECONDS) -> None:
        self.settings = settings
        self.writes = writes
        self.enabled = enabled  # off for modules that never hide objects: every view is current
        self.list_seconds = list_seconds
        self._cond = threading.Condition()
        self._synced = writes()  # own writes up to here are covered by a nudge (or by C_Initialize)
        self._round = 0  # the next nudge's number
        self._finished = -1  # the last nudge done
        self._running = False
        self._listed_at = float("-inf")
        self.nudges = 0  # for metrics and tests

    @property
    def current(self) -> bool:
        """No own object-changing call since the last nudge: nothing can be hidden."""
        return not self.enabled or self.writes() == self._synced

    def catch_up(self) -> bool:
        """Nudge the token unless the view is current; True when a nudge happened (look again)."""
        with self._cond:
            if self.current:
                return False
            mine = self._round
            while self._finished < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._round += 1
                before = self.writes()
                self._cond.release()
                try:
                    nudged = self._nudge()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._finished = self._round - 1
                    self._cond.notify_all()
                if nudged:
                    self._synced = max(self._synced, before)
            return True

    def catch_up_for_list(self) -> bool:
        """``catch_up`` for a listing, at most every ``list_seconds`` (a listing is paged)."""
        if self.current or time.monotonic() - self._listed_at < self.list_seconds:
            return False
        self._listed_at = time.monotonic()
        return self.catch_up()

    def _nudge(self) -> bool:
        self.nudges += 1
        try:
            return bool(freshview.ask(self.settings, "nudge")["nudged"])
        except Exception as exc:  # noqa: BLE001 - the lookup then reports what this process sees
            log.warning("token %s: nudging the token from a fresh process failed (%s)", self.settings.name, exc)
            return False
