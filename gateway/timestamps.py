"""UTC timestamps to the millisecond, as ``datetime.isoformat(timespec="milliseconds")`` writes them.

Every answered request is stamped twice (its access line and its audit record),
and ``datetime.fromtimestamp(...).isoformat(...)`` is a measurable part of that
on the event loop and the audit thread.  The date and time of day change once
a second, so they are formatted once per second here.
"""

from __future__ import annotations

from datetime import datetime, timezone

# (second, its "YYYY-MM-DDTHH:MM:SS"); one tuple, so another thread sees the old pair or the new one.
_second: tuple[int, str] = (-1, "")


def utc_millis(when: float, zone: str = "+00:00") -> str:
    """``datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")``, with
    ``zone`` for its ``+00:00`` (the audit trail writes ``Z``)."""
    global _second
    second, frac = int(when), when % 1.0
    micros = round(frac * 1e6)  # as datetime rounds: half to even, to microseconds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached, text = _second
    if cached != second:
        text = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    return f"{text}.{micros // 1000:03d}{zone}"
