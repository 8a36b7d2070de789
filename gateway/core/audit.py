"""The append-only audit trail: one JSON line per event, chained by hashes and sealed by MACs.

Each record carries ``hash = SHA-256(prev || record)``, where ``record`` is
the canonical JSON of the line without its ``hash`` and ``mac`` members and
``prev`` the previous record's chain value (32 zero bytes before the first).
The last record of every append also carries ``mac = HMAC-SHA256(K, hash)``,
the seal, with an HMAC key that never leaves the token (found by its label,
see ``gateway.core.system_keys``).  A seal covers its record and, through the
hashes, every record before it, so changing, inserting, reordering or removing
a record breaks the log at that record (or, if the hashes after it were
recomputed, at the next seal); ``verify`` names the first bad one.  A log
always ends with a seal, so records appended without the key, or a cut in the
middle of an append, show too.  Removing whole appends from the END cannot
show without an outside anchor: compare the last sequence number and MAC that
``verify`` reports with a copy kept elsewhere.

Why one MAC per append and not per record: the MAC is a token call, the
costliest part of a record, and appends group the records of concurrent
requests (below).  Records written before this scheme carry a ``mac`` of
``HMAC(K, prev || record)`` and no ``hash``; their chain value is that MAC,
and ``verify`` checks them as such.

The log is a directory of segment files ``<8 hex digits>.log`` (the hex is a
Unix time at the segment's start, as HEM names its log files); a new segment
starts when the current one reaches ``segment_bytes``.  Several processes may
append to one directory: an ``flock`` on ``.lock`` serialises appends, and
each append reads the previous record back from the file, so the chain holds
across processes.  Records are written with one ``write`` on an ``O_APPEND``
descriptor and not fsynced (the OS flushes them; an fsync per request would
cost more than the request).

Group commit: ``record`` queues its event, and one writer per process takes
everything queued so far and appends it in one batch (one lock, one tail read,
one seal in the token, one ``write``), on a thread of its own so that waiting
for another process's lock never holds a token thread.  Each caller still
waits until its own record is written.

Records never hold secrets: callers pass event names, status codes,
subjects, kids and request ids only.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import functools
import hashlib
import hmac as hmac_lib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.core.system_keys import ensure_system_key, find_system_key
from gateway.errors import NotFound, Unsupported
from gateway.timestamps import utc_millis
from gateway.token.lanes import Lane

if TYPE_CHECKING:
    from gateway.token import Token

log = logging.getLogger(__name__)

AUDIT_KEY_ROLE: Final = "audit-mac"
GENESIS: Final = bytes(32)
DEFAULT_SEGMENT_BYTES: Final = 1 << 20
SEGMENT_RE: Final = re.compile(r"[0-9a-f]{8}")
MAX_DETAIL_CHARS: Final = 256
MAX_KIDS: Final = 8
_TAIL_BYTES: Final = 8192  # twice the longest record (non-ASCII subject and detail)
_LOCK_NAME: Final = ".lock"

MacFunction = Callable[[bytes], bytes]


class AuditResult(enum.IntEnum):
    """HEM's LOG_RESULT values (the other dialects use the same three)."""

    OK = 0
    FAILED = 1  # refused: authentication, authorisation, transport
    ERROR = 2  # the request was wrong or could not be served

    @classmethod
    def for_status(cls, status: int) -> "AuditResult":
        if status < 400:
            return cls.OK
        if status in (401, 403, 418):
            return cls.FAILED
        return cls.ERROR


@dataclass(frozen=True)
class AuditEvent:
    """One access-controlled call: what, by whom, with which keys, and the answer."""

    event: str  # e.g. "KEY_DERIVE"
    result: AuditResult
    status: int
    subject: str = "-"  # who: "U:alice", "M:root", "ext:<issuer>:<sub>", "-" when unknown
    kids: tuple[str, ...] = ()
    request_id: str = ""
    dialect: str = ""
    code: int | None = None  # the dialect's numeric event type, e.g. HEM LOG_TYPE 26
    detail: str = ""  # a short non-secret note (an error message)
    time: float = field(default_factory=time.time)

    def body(self, seq: int) -> dict[str, Any]:
        """The record without its MAC, as stored."""
        record: dict[str, Any] = {
            "seq": seq,
            "time": _stamp(self.time),
            "event": self.event,
            "code": self.code,
            "result": int(self.result),
            "result_name": self.result.name,
            "status": self.status,
            "subject": self.subject[:200],
            "kids": list(self.kids[:MAX_KIDS]),
            "request_id": self.request_id[:128],
            "dialect": self.dialect,
        }
        if self.detail:
            record["detail"] = self.detail[:MAX_DETAIL_CHARS]
        return record

    def canonical(self, seq: int) -> bytes:
        """``canonical(self.body(seq))``, written out in its key order without building and sorting
        a dict: every record of every request goes through here, on the audit thread."""
        code = "null" if self.code is None else str(int(self.code))
        detail = f'"detail":{_str(self.detail[:MAX_DETAIL_CHARS])},' if self.detail else ""
        kids = ",".join(_str(k) for k in self.kids[:MAX_KIDS])
        result = self.result
        return (f'{{"code":{code},{detail}"dialect":{_str(self.dialect)},"event":{_str(self.event)},'
                f'"kids":[{kids}],"request_id":{_str(self.request_id[:128])},"result":{int(result)},'
                f'"result_name":{_str(result.name)},"seq":{int(seq)},"status":{int(self.status)},'
                f'"subject":{_str(self.subject[:200])},"time":{_str(_stamp(self.time))}}}').encode("ascii")


# What json.dumps(ensure_ascii=True) writes for a str (C).
_str: Final = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _stamp(when: float) -> str:
    """``2026-12-04T16:53:45.289Z``: UTC, milliseconds."""
    return utc_millis(when, "Z")


@dataclass(frozen=True)
class BadRecord:
    """The first record that does not verify, and why."""

    segment: str
    line: int  # 1-based line in the segment
    seq: int | None
    reason: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"segment {self.segment} line {self.line}{seq}: {self.reason}"


@dataclass(frozen=True)
class VerifySummary:
    """What a good log holds (print it: the tail is what an outside anchor must confirm)."""

    records: int
    segments: int
    last_seq: int
    last_mac: str


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def chain_input(prev: bytes, record: dict[str, Any]) -> bytes:
    return prev + canonical(record)


def chain_hash(prev: bytes, record: dict[str, Any]) -> bytes:
    """The ``hash`` of ``record`` (without its ``hash`` and ``mac``) after chain value ``prev``."""
    return _chain(prev, canonical(record))


def _chain(prev: bytes, canonical_record: bytes) -> bytes:
    return hashlib.sha256(prev + canonical_record).digest()


def chain_value(record: dict[str, Any]) -> bytes:
    """What the next record chains to: the ``hash``, or the ``mac`` of a record from before hashes."""
    return bytes.fromhex(record["hash"] if "hash" in record else record["mac"])


def segment_ids(directory: Path) -> list[str]:
    """Segment ids in log order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n[:-4] for n in names if n.endswith(".log") and SEGMENT_RE.fullmatch(n[:-4]))


def _last_line(fd: int, size: int) -> dict[str, Any] | None:
    """The last complete line of the ``size`` bytes open at ``fd``, parsed (None when empty).

    Read on every append after another process's, so only the end of the file
    is read, with one ``pread``: a record is well under ``_TAIL_BYTES``, and a
    longer line is read whole.
    """
    start = max(0, size - _TAIL_BYTES)
    while True:
        tail = os.pread(fd, size - start, start).rstrip()
        cut = tail.rfind(b"\n")
        if cut >= 0 or start == 0:
            break
        start = max(0, start - 8 * _TAIL_BYTES)
    if not tail:
        return None
    record = json.loads(tail[cut + 1:])
    if not isinstance(record, dict):
        raise ValueError("the last line is not a JSON object")
    return record


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete line of a segment, parsed (None for an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _last_line(fd, os.fstat(fd).st_size)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Tail:
    """The end of this process's last append: enough to append again without reading back."""

    path: Path
    fd: int  # the segment, kept open for the next append (closed with the log or the segment)
    inode: int
    size: int
    prev: bytes  # the chain value of the last record
    seq: int  # the next sequence number


class AuditLog:
    """Appends chained records to a segment directory; the MAC is computed in ``token``."""

    def __init__(self, directory: Path, token: Token, key_kid: bytes, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.token = token
        self.key_kid = key_kid
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # flock does not exclude threads sharing one descriptor
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        # Group commit (see the module docstring): events waiting for the writer task.
        self._queue: list[tuple[AuditEvent, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._writer_thread = Lane(1, "audit")
        self._tail: _Tail | None = None  # where this process's last append ended

    @classmethod
    async def open(cls, directory: Path, token: Token, **kwargs: Any) -> "AuditLog":
        """Find (or create) the audit MAC key in ``token`` and open the log in ``directory``."""
        from gateway.token import HashAlg

        token.capabilities.require_hmac(HashAlg.SHA256)
        info = await token.run(functools.partial(
            ensure_system_key, token, AUDIT_KEY_ROLE, "", lambda kid, label: _make_mac_key(token, kid, label),
            lock_dir=directory / "locks"))
        return cls(directory, token, info.kid, **kwargs)

    def close(self) -> None:
        self._writer_thread.close()
        with self._lock:
            self._close_segment(self._tail)
            self._tail = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 with the audit key, in the token (blocking)."""
        from gateway.token import HashAlg

        # A session copy: the key is used on every append by every worker (see Token._session_copy).
        return self.token.hmac(self.key_kid, HashAlg.SHA256, data, session_copy=True)

    async def record(self, event: AuditEvent) -> int:
        """Append ``event`` (with whatever else is queued, see the module docstring); returns its
        sequence number once it is written."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[int] = loop.create_future()
        self._queue.append((event, written))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_queued())
        return await written

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                seqs = await self._writer_thread.run(functools.partial(self._append_batch, [e for e, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets it
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for (_, written), seq in zip(batch, seqs):
                    if not written.done():
                        written.set_result(seq)

    def _append(self, event: AuditEvent) -> int:
        """Append one record now (blocking); returns its sequence number."""
        return self._append_batch([event])[0]

    def _append_batch(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append ``events`` in order under the cross-process lock (blocking); their sequence numbers."""
        if not events:
            return []
        with self._lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                path, prev, seq = self._where_to_append()
                first = seq
                lines: list[bytes] = []
                for event in events:
                    record = event.canonical(seq)
                    prev = _chain(prev, record)
                    # The stored line is the canonical record with its hash (and the seal) added
                    # at the end: verify re-canonicalises, so key order there does not matter,
                    # and the record is serialised once.
                    lines.append(record[:-1] + b',"hash":"' + prev.hex().encode("ascii") + b'"')
                    seq += 1
                lines[-1] += b',"mac":"' + self.mac(prev).hex().encode("ascii") + b'"'  # the seal covers the whole append
                data = b"}\n".join(lines) + b"}\n"
                tail, self._tail = self._tail, None  # until the write is known to be whole
                if tail is not None and tail.path == path:
                    fd = tail.fd
                else:
                    self._close_segment(tail)
                    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # read too: see _where_to_append
                try:
                    os.write(fd, data)
                    written = os.fstat(fd)
                except BaseException:
                    os.close(fd)
                    raise
                if written.st_size < self.segment_bytes:
                    self._tail = _Tail(path, fd, written.st_ino, written.st_size, prev, seq)
                else:
                    os.close(fd)  # full: the next append starts a new segment
                return list(range(first, seq))
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _where_to_append(self) -> tuple[Path, bytes, int]:
        """(segment, chain value to go on from, next sequence number), under the lock."""
        tail = self._tail
        if tail is not None:
            # Only the newest segment grows, and a newer one starts only once it is full.
            # So the segment of our last append, if not full, is still the newest: no
            # directory listing.  If nobody appended since (same size), not even a read.
            # The path is looked up again (not the open descriptor) because a segment
            # moved away or replaced must not be appended to.
            try:
                now = os.stat(tail.path)
            except FileNotFoundError:
                now = None
            if now is not None and now.st_ino == tail.inode:
                if now.st_size == tail.size:
                    return tail.path, tail.prev, tail.seq
                if now.st_size < self.segment_bytes:
                    last = _last_line(tail.fd, now.st_size)
                    if last is not None:
                        return tail.path, chain_value(last), int(last["seq"]) + 1
            self._tail = None
            self._close_segment(tail)
        path, last = self._current_segment()
        if last is not None:
            return path, chain_value(last), int(last["seq"]) + 1
        # a new segment: carry the chain over from the previous one
        previous = self._previous_tail(path)
        if previous is not None:
            return path, chain_value(previous), int(previous["seq"]) + 1
        return path, GENESIS, 1

    @staticmethod
    def _close_segment(tail: _Tail | None) -> None:
        if tail is not None:
            os.close(tail.fd)

    def _current_segment(self) -> tuple[Path, dict[str, Any] | None]:
        ids = segment_ids(self.directory)
        if ids:
            path = self.directory / f"{ids[-1]}.log"
            if path.stat().st_size < self.segment_bytes:
                return path, _last_record(path)
            new_id = max(int(time.time()), int(ids[-1], 16) + 1)
        else:
            new_id = int(time.time())
        return self.directory / f"{new_id:08x}.log", None

    def _previous_tail(self, new_path: Path) -> dict[str, Any] | None:
        for seg in reversed(segment_ids(self.directory)):
            path = self.directory / f"{seg}.log"
            if path != new_path:
                last = _last_record(path)
                if last is not None:
                    return last
        return None

    def segments(self) -> list[str]:
        return segment_ids(self.directory)

    def read_segment(self, segment: str) -> str:
        if not SEGMENT_RE.fullmatch(segment):
            raise NotFound(f"no audit log segment {segment!r}; ids are 8 hex digits")
        try:
            return (self.directory / f"{segment}.log").read_text(encoding="ascii")
        except FileNotFoundError:
            raise NotFound(f"no audit log segment {segment!r}") from None


def _make_mac_key(token: Token, kid: bytes, label: str) -> Any:
    from gateway.token import SecretSpec, SecretType, Usage

    return token.generate_secret(SecretSpec(kid, label, SecretType.GENERIC, 32, Usage(sign=True)))


def _records(directory: Path) -> Iterator[tuple[str, int, bytes]]:
    for seg in segment_ids(directory):
        with (directory / f"{seg}.log").open("rb") as f:
            for number, line in enumerate(f, start=1):
                yield seg, number, line


def verify(directory: Path, mac: MacFunction) -> BadRecord | VerifySummary:
    """Walk every segment in order and check hashes and seals; the first bad record, or a summary.

    ``mac(data)`` computes HMAC-SHA256 with the audit key (in the token).
    """
    prev, expected_seq, count, segments = GENESIS, 1, 0, set()
    last_mac, sealed_seq = b"", 0
    where: tuple[str, int, int | None] = ("", 0, None)
    for seg, number, raw in _records(directory):
        segments.add(seg)
        if not raw.endswith(b"\n"):
            return BadRecord(seg, number, None, "the line is incomplete (no newline)")
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            stored_hash = bytes.fromhex(record.pop("hash")) if "hash" in record else None
            stored_mac = bytes.fromhex(record.pop("mac")) if "mac" in record else None
            if stored_hash is None and stored_mac is None:
                raise ValueError("it has neither hash nor mac")
            seq = record.get("seq")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return BadRecord(seg, number, None, f"not a well-formed record ({exc})")
        if seq != expected_seq:
            return BadRecord(seg, number, seq if isinstance(seq, int) else None,
                             f"sequence number {seq}, expected {expected_seq} (a record was removed or inserted)")
        if stored_hash is None:  # written before hashes: every record has its own MAC
            assert stored_mac is not None
            if not hmac_lib.compare_digest(mac(chain_input(prev, record)), stored_mac):
                return BadRecord(seg, number, seq, "the MAC does not match: this record, or the one before it, was changed")
            prev = stored_mac
        else:
            if not hmac_lib.compare_digest(chain_hash(prev, record), stored_hash):
                return BadRecord(seg, number, seq, "the hash does not match: this record, or the one before it, was changed")
            prev = stored_hash
            if stored_mac is not None and not hmac_lib.compare_digest(mac(stored_hash), stored_mac):
                since = f"since seq {sealed_seq}" if sealed_seq else "from the first"
                return BadRecord(seg, number, seq, f"the MAC does not match: a record {since} up to this one was "
                                                   "changed and the hashes recomputed")
        if stored_mac is not None:
            last_mac, sealed_seq = stored_mac, expected_seq
        where = (seg, number, expected_seq)
        expected_seq, count = expected_seq + 1, count + 1
    if count and sealed_seq != expected_seq - 1:
        return BadRecord(*where, f"the log ends after seq {sealed_seq or 'none'}'s MAC: records were "
                                 "appended without the audit key, or an append was cut short")
    return VerifySummary(count, len(segments), expected_seq - 1, last_mac.hex())


def verify_with_token(directory: Path, token: Token) -> BadRecord | VerifySummary:
    """``verify`` with the audit key found in ``token`` (blocking)."""
    from gateway.token import HashAlg

    info = find_system_key(token, AUDIT_KEY_ROLE, "")
    if info is None:
        raise Unsupported(f"token {token.name!r} holds no audit MAC key; nothing was ever logged with it", "audit-mac key")
    return verify(directory, lambda data: token.hmac(info.kid, HashAlg.SHA256, data))
