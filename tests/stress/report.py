"""The counts each stress test prints: collected here, printed at the end of the run
(tests/stress/conftest.py), written to state/stress/last-run.json and, by a full run,
into docs/reliability.md between its generated-block markers."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FULL = os.environ.get("GATEWAY_STRESS", "") == "full"
LAST_RUN = REPO / "state" / "stress" / "last-run.json"
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- stress-counts:begin (written by make stress) -->", "<!-- stress-counts:end -->"
# A run writes docs/reliability.md only when it ran every part (not `make stress PYTEST_ARGS=-k ...`).
EVERY_PART = ("fuzzing", "hostile tokens, HEM", "hostile tokens, Vault", "faults under load", "two instances")


def size(full: int, reduced: int) -> int:
    """``full`` under `make stress`, ``reduced`` in `make test`."""
    return full if FULL else reduced


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    def add(self, line: str) -> None:
        self.lines.append(line)


SECTIONS: list[Section] = []


def section(title: str) -> Section:
    found = Section(title)
    SECTIONS.append(found)
    return found


def render() -> list[str]:
    out = [f"stress run ({'full' if FULL else 'reduced'} size):"]
    for s in SECTIONS:
        out.append(f"  {s.title}")
        out += [f"    {line}" for line in s.lines]
    return out


def write() -> None:
    if not SECTIONS:
        return
    stamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
    LAST_RUN.write_text(json.dumps({"size": "full" if FULL else "reduced", "finished": stamp,
                                    "sections": [s.__dict__ for s in SECTIONS]}, indent=1, default=str) + "\n")
    if not FULL or not DOC.is_file() or not all(any(s.title.startswith(part) for s in SECTIONS) for part in EVERY_PART):
        return
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return
    block = [BEGIN, "", f"Last full run: {stamp} (`make stress`).", "", "```"] + render() + ["```", "", END]
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    DOC.write_text(pattern.sub(lambda _: "\n".join(block), text), encoding="utf-8")
