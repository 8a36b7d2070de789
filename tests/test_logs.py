"""The process log handler: access lines are held back briefly and written together; nothing else waits."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest

from gateway.logs import (ACCESS_FLUSH_SECONDS, ACCESS_HOLD_BYTES, ACCESS_LOGGER, REQUEST_ID, AccessLog, JsonFormatter,
                          LineHandler, setup_logging)


@pytest.fixture()
def handler() -> Iterator[tuple[LineHandler, io.StringIO]]:
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    yield handler, stream
    handler.close()


def record(logger: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, message, None, None)


def messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_access_lines_wait_and_any_other_record_writes_them_first(handler: tuple[LineHandler, io.StringIO]) -> None:
    h, stream = handler
    h.handle(record(ACCESS_LOGGER, "GET /a 200"))
    h.handle(record(ACCESS_LOGGER, "GET /b 200"))
    assert stream.getvalue() == ""
    h.handle(record("gateway.server", "listening"))
    assert messages(stream) == ["GET /a 200", "GET /b 200", "listening"]


def test_an_access_warning_is_not_held(handler: tuple[LineHandler, io.StringIO]) -> None:
    h, stream = handler
    h.handle(record(ACCESS_LOGGER, "GET /a 200"))
    h.handle(record(ACCESS_LOGGER, "odd", logging.WARNING))
    assert messages(stream) == ["GET /a 200", "odd"]


def test_held_lines_are_written_within_the_flush_interval(handler: tuple[LineHandler, io.StringIO]) -> None:
    h, stream = handler
    h.handle(record(ACCESS_LOGGER, "GET /a 200"))
    deadline = time.monotonic() + ACCESS_FLUSH_SECONDS + 2.0
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert messages(stream) == ["GET /a 200"]
    # and again after the flusher went back to waiting
    h.handle(record(ACCESS_LOGGER, "GET /b 200"))
    deadline = time.monotonic() + ACCESS_FLUSH_SECONDS + 2.0
    while len(messages(stream)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert messages(stream) == ["GET /a 200", "GET /b 200"]


def test_a_full_hold_is_written_at_once_and_close_writes_the_rest(handler: tuple[LineHandler, io.StringIO]) -> None:
    h, stream = handler
    path = "/" + "p" * 1000
    count = 0
    while not stream.getvalue():
        h.handle(record(ACCESS_LOGGER, f"GET {path} {count}"))
        count += 1
        assert count * len(path) < 2 * ACCESS_HOLD_BYTES
    assert len(messages(stream)) == count
    h.handle(record(ACCESS_LOGGER, "GET /last 200"))
    h.close()
    assert messages(stream)[-1] == "GET /last 200"


@pytest.fixture()
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_setting_logging_up_again_writes_what_the_old_handler_held(root_logging: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", first)
    logging.getLogger(ACCESS_LOGGER).info("GET /a 200")
    assert first.getvalue() == ""
    setup_logging("info", "json", second)
    assert messages(first) == ["GET /a 200"]


def test_access_lines_built_directly_match_the_logging_path(root_logging: logging.Logger) -> None:
    """AccessLog writes, straight to the LineHandler, the line logging would write; with anything
    else on the way (a filter, another handler, a level) it goes through logging."""
    root = root_logging
    stream = io.StringIO()
    access = AccessLog()

    def written() -> list[dict[str, object]]:
        logging.getLogger().handlers[0].flush()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        stream.truncate(0)
        stream.seek(0)
        return lines

    setup_logging("info", "json", stream)
    assert access._direct_sink() is root.handlers[0]
    token = REQUEST_ID.set("rid-direct")
    try:
        access.write("POST", "/api/x", "/api/{x}", 201, 1.234, "127.0.0.1", "rid-direct")
        assert stream.getvalue() == ""  # held like any access line
        direct = written()
        root.addFilter(lambda r: True)  # any filter: logging's way
        assert access._direct_sink() is None
        access.write("POST", "/api/x", "/api/{x}", 201, 1.234, "127.0.0.1", "rid-direct")
        via_logging = written()
    finally:
        REQUEST_ID.reset(token)
        root.filters.clear()
    assert len(direct) == len(via_logging) == 1
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"
    assert re.fullmatch(ts, str(direct[0].pop("ts"))) and re.fullmatch(ts, str(via_logging[0].pop("ts")))
    assert list(direct[0].items()) == list(via_logging[0].items())
    assert direct[0]["msg"] == "POST /api/x 201" and direct[0]["request_id"] == "rid-direct"

    # Spelled as json spells it: no request id, no remote, quotes, backslashes, non-ASCII, a whole number.
    odd = ("GET", '/a"b\\c/\u00e9\u20ac\U0001f511\n', "unmatched", 404, 2.0, None, None)
    lines = {}
    for way in ("direct", "logging"):
        if way == "logging":
            root.addFilter(lambda r: True)
        try:
            access.write(*odd)
            stream.seek(0)
            root.handlers[0].flush()
            raw = stream.getvalue().splitlines()
            stream.truncate(0)
            stream.seek(0)
        finally:
            root.filters.clear()
        assert len(raw) == 1
        lines[way] = re.sub(r'"ts": "[^"]*"', '"ts": "-"', raw[0])
    assert lines["direct"] == lines["logging"]  # byte for byte, timestamps aside

    caught = io.StringIO()
    extra = logging.StreamHandler(caught)
    logging.getLogger(ACCESS_LOGGER).addHandler(extra)  # as pytest's caplog does
    try:
        assert access._direct_sink() is None
        access.write("GET", "/b", "/b", 200, 0.5, None, None)
        assert "GET /b 200" in caught.getvalue()
    finally:
        logging.getLogger(ACCESS_LOGGER).removeHandler(extra)
    assert [line["msg"] for line in written()] == ["GET /b 200"]  # and on to the root handler
    setup_logging("warning", "json", stream)
    assert access._direct_sink() is None  # access lines are INFO: not written at all
    access.write("GET", "/c", "/c", 200, 0.5, None, None)
    assert written() == []


def test_an_access_line_after_a_fork_names_the_child(root_logging: logging.Logger) -> None:
    """The pid access lines carry is kept between lines (a system call each time otherwise) and is
    refreshed in a forked child, by one fork handler for the process however many AccessLogs exist."""
    import os

    stream = io.StringIO()
    setup_logging("info", "json", stream)
    access = AccessLog()
    for _ in range(3):
        AccessLog()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            access.write("GET", "/x", "/x", 200, 1.0, None, None)
            logging.getLogger().handlers[0].flush()
            os.write(write_end, stream.getvalue().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        written = pipe.read().decode()
    assert os.waitpid(child, 0)[1] == 0
    assert json.loads(written.splitlines()[0])["pid"] == child
    access.write("GET", "/x", "/x", 200, 1.0, None, None)
    logging.getLogger().handlers[0].flush()
    assert json.loads(stream.getvalue().splitlines()[-1])["pid"] == os.getpid()
