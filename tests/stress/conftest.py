"""Prints every stress test's counts at the end of the run (also under `make test`)."""

from __future__ import annotations

from typing import Any

from tests.stress import report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not report.SECTIONS:
        return
    terminalreporter.section("stress counts")
    for line in report.render():
        terminalreporter.write_line(line)
    report.write()
