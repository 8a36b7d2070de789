"""Process logging: one JSON object per line on stderr (or plain text), with the request id.

The HTTP middleware puts the request id into :data:`REQUEST_ID` (a context
variable), so every log line written while a request is handled carries it,
including lines from token worker threads (the metrics hook runs adapter calls
in a copy of the caller's context).  Extra fields passed with
``log.info(..., extra={"fields": {...}})`` become top-level keys.

Nothing here knows which values are secret: the rule is simply that no caller
logs PINs, passphrases, tokens, keys, request bodies or Authorization headers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, Final, TextIO

from gateway.timestamps import utc_millis

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _stamp_request_ids() -> None:
    """Give every log record the request id current when it is created (``record.request_id``).

    At creation, not at formatting: handlers may format later, elsewhere.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_gateway_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return record

    factory._gateway_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_stamp_request_ids()

LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Loggers that are chatty at INFO and say nothing an operator needs.
_QUIET: Final = ("aiohttp.access",)
ACCESS_LOGGER: Final = "gateway.access"  # one line per answered request (gateway.http.middleware)
ACCESS_FLUSH_SECONDS: Final = 0.5
ACCESS_HOLD_BYTES: Final = 64 * 1024


_ENCODER: Final = json.JSONEncoder(default=str, ensure_ascii=False)
_json_str: Final = json.encoder.encode_basestring  # type: ignore[attr-defined]  # what _ENCODER writes for a str (C)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "pid", "msg", "request_id"?, "exc"?, ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": utc_millis(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    """``time LEVEL [pid] logger: message (request id) key=value ...``, for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        request_id = getattr(record, "request_id", None)
        if request_id:
            text += f" request_id={request_id}"
        return text


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One line per record on a stream; access lines are held back and written together.

    A write per request costs the event loop thread more than the line itself:
    the thread gives up the interpreter lock for the system call and must win
    it back from the token threads (``make bench``, ``gw-hem-ecdh``).  So
    access lines (:data:`ACCESS_LOGGER` below WARNING) wait at most
    :data:`ACCESS_FLUSH_SECONDS`, or until :data:`ACCESS_HOLD_BYTES` are held,
    as nginx's ``access_log ... buffer= flush=`` does.  Any other record writes
    the held lines first and then itself, at once, so order is kept and
    nothing an operator waits for is late.  ``flush``/``close`` (and
    ``logging.shutdown`` at exit) write what is held; a killed process loses
    at most that window of access lines.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._held_bytes = 0
        self._pending = threading.Event()  # set while lines are held
        self._stop = False
        self._flusher_pid = 0  # the flusher thread does not survive a fork

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            self._hold(self.format(record) + self.terminator,
                       record.name == ACCESS_LOGGER and record.levelno < logging.WARNING)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)

    def _hold(self, line: str, access: bool) -> None:
        """Hold ``line`` when it is an access line and there is room, else write it and all held (lock held)."""
        self._held.append(line)
        self._held_bytes += len(line)
        if access and self._held_bytes < ACCESS_HOLD_BYTES:
            if not self._pending.is_set():
                self._start_flusher()
                self._pending.set()
            return
        self._write_held()

    def hold_access_line(self, line: str) -> None:
        """An access line formatted by :class:`AccessLog` (same rules as one that came through ``emit``)."""
        self.acquire()
        try:
            if self.stream is not None:
                self._hold(line + self.terminator, True)
        finally:
            self.release()

    def _write_held(self) -> None:
        if self._held:
            text, self._held, self._held_bytes = "".join(self._held), [], 0
            self.stream.write(text)
        self.stream.flush()
        self._pending.clear()

    def _start_flusher(self) -> None:
        if self._flusher_pid != os.getpid():
            self._flusher_pid = os.getpid()
            threading.Thread(target=self._flush_held_lines, name="log-flusher", daemon=True).start()

    def _flush_held_lines(self) -> None:
        while not self._stop:
            self._pending.wait()
            time.sleep(ACCESS_FLUSH_SECONDS)
            try:
                self.flush()
            except (OSError, ValueError):  # the stream went away (the process is ending)
                return

    def flush(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self._write_held()
        finally:
            self.release()

    def close(self) -> None:
        self._stop = True
        self.flush()
        super().close()


# os.getpid() is a system call each time; access lines read this, kept right across forks.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)  # once per process, not once per AccessLog


class AccessLog:
    """Writes the access line of each answered request (``gateway.access`` at INFO).

    The line is the one ``logging`` would write through :class:`JsonFormatter`,
    but where the only handler on its way is the :class:`LineHandler` that
    :func:`setup_logging` installed with that formatter, it is built here and
    handed to the handler directly: the logging module's record, factory,
    filters and handler lookups cost the event loop thread about as much as
    the rest of the gateway's own per-request logging and metrics together
    (``make bench``, ``gw-hem-ecdh``).  Anywhere else (text format, another
    handler added, as pytest's ``caplog`` does, a filter, another level) the
    line goes through ``logging`` as before.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._root = logging.getLogger()

    def _direct_sink(self) -> LineHandler | None:
        logger, root = self._logger, self._root
        handlers = root.handlers
        if (len(handlers) != 1 or logger.handlers or logger.filters or root.filters or not logger.propagate
                or logger.disabled or not logger.isEnabledFor(logging.INFO)):
            return None
        handler = handlers[0]
        if (type(handler) is not LineHandler or type(handler.formatter) is not JsonFormatter or handler.filters
                or handler.level > logging.INFO):
            return None
        return handler

    def write(self, method: str, path: str, route: str, status: int, duration_ms: float, remote: str | None,
              request_id: str | None) -> None:
        sink = self._direct_sink()
        if sink is None:
            self._logger.info("%s %s %d", method, path, status, extra={"fields": {
                "method": method, "path": path, "route": route, "status": status, "duration_ms": duration_ms,
                "remote": remote}})
            return
        # Written out in JsonFormatter's key order and json's spelling (the test compares the two);
        # building a dict for JSONEncoder cost more than the rest of the line.
        rid = f'"request_id": {_json_str(request_id)}, ' if request_id else ""
        sink.hold_access_line(
            f'{{"ts": "{utc_millis(time.time())}", "level": "info", "logger": "{ACCESS_LOGGER}", "pid": {_pid}, '
            f'"msg": {_json_str(f"{method} {path} {status}")}, {rid}"method": {_json_str(method)}, '
            f'"path": {_json_str(path)}, "route": {_json_str(route)}, "status": {int(status)}, '
            f'"duration_ms": {float(duration_ms)!r}, "remote": {"null" if remote is None else _json_str(remote)}}}')


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root handlers with one stderr handler in ``fmt`` ("json" or "text")."""
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.flush()  # a LineHandler of an earlier call may hold access lines
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    # Every request writes an access line; these formats use none of what the
    # logging module would look up for each record (caller frame, thread and
    # process names), so skip it, as the logging HOWTO's "Optimization" advises.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
