"""One process per SoftHSM2 token changes its objects; the others send it their changes.

SoftHSM2 re-reads a token's whole folder (lists it and stats every object file)
the first time a process touches a token object after another process changed
the token, and it does so outside its own lock, racing the calls of the
process's other threads.  Two workers that both store keys make each other pay
that on nearly every call: with 10,000 keys, 156 ms per re-read, and two
workers then stored fewer keys per second than one (docs/benchmarks.md).  One
writer never re-reads for its own writes.

So the gateway processes on one token elect a writer through ``flock`` on a
lock file next to the deletion counter (keycopies.py).  The writer listens on a
Unix socket beside it; every other process sends its object-changing calls
(``token.OBJECT_CHANGING_OPS``) there and keeps its reads local.  When the
writer dies its lock goes with it, and the next process with a change to make
takes over.

What crosses the socket: the call's name and arguments, the result, or the
error (class name, message, and its extra attributes).  Arguments and results
are the adapter's own types (``types.py``), pickled; the reading side refuses
every class outside that list, so a peer cannot make it run code.  The socket
is created owner-only and each peer's uid is checked: a process that could
connect could read the gateway's memory anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pickle
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable

from .. import errors
from . import types
from .lanes import spread_out

log = logging.getLogger("gateway.token")

_HEADER = struct.Struct(">I")
_MAX_FRAME = 16 << 20  # a call carries a key's label and a point, a result one KeyInfo
# A writer that has not answered a call in this long is taken for lost (the call may still be
# made: the caller looks for it, and sweeps what it may leave, see Token._write).
CALL_SECONDS = 120.0
_TYPES = frozenset({"Curve", "SecretType", "HashAlg", "EcdhKdf", "KeyClass", "Usage", "SecretSpec", "KeyInfo",
                    "DataObject"})
_ERROR_ATTRS = ("mechanism", "setting", "ckr")

Handler = Callable[[str, tuple[Any, ...], dict[str, Any]], Any]


class NoWriter(Exception):
    """No writer answers on the socket (it died, or is just starting to listen)."""


class WriterLost(Exception):
    """The connection broke after the call was sent: the writer may or may not have made the change."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == types.__name__ and name in _TYPES:
            return getattr(types, name)
        if module == "builtins" and name == "frozenset":
            return frozenset
        raise pickle.UnpicklingError(f"{module}.{name} is not sent between gateway processes")


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def encode_error(exc: BaseException) -> tuple[str, str, dict[str, str]]:
    if isinstance(exc, errors.GatewayError):
        attrs = {a: getattr(exc, a) for a in _ERROR_ATTRS if isinstance(getattr(exc, a, None), str)}
        return type(exc).__name__, exc.message, attrs
    log.exception("writer: a relayed call failed unexpectedly", exc_info=exc)
    return "TokenUnavailable", "the token's writer process failed the call", {}


def decode_error(name: str, message: str, attrs: dict[str, str]) -> errors.GatewayError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.GatewayError)):
        cls = errors.TokenUnavailable
    exc = cls.__new__(cls)
    errors.GatewayError.__init__(exc, message)
    for key, value in attrs.items():
        if key in _ERROR_ATTRS:
            setattr(exc, key, value)
    return exc


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> bytes | None:
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > _MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes")
    return _recv_exact(sock, size)


class _Server:
    """The writer's side: one thread accepts, one thread per connection runs its calls in turn."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.served = 0
        self._closed = False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a writer that died: this process holds the lock now
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._sock.listen(64)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._busy = 0  # calls running: close() waits for them, so none is cut off half-way
        threading.Thread(target=self._accept, name="pkcs11-writer-accept", daemon=True).start()

    def _accept(self) -> None:
        spread_out()  # inherited by the call threads: every worker's writes run here
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                continue  # the peer went away before it was accepted, or no descriptor was free
            try:
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != os.getuid():
                    log.warning("writer: refused a connection from uid %d on %s", uid, self.path)
                    conn.close()
                    continue
                with self._lock:
                    self._connections.add(conn)
                threading.Thread(target=self._serve, args=(conn,), name="pkcs11-writer-call", daemon=True).start()
            except (OSError, RuntimeError) as exc:  # a peer gone meanwhile; no thread to be had
                log.warning("writer: dropped a connection on %s (%s)", self.path, exc)
                with self._lock:
                    self._connections.discard(conn)
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                frame = _recv(conn)
                if frame is None:
                    return
                with self._lock:
                    if self._closed:
                        return  # unread: the caller finds nothing made, and asks the next writer
                    self._busy += 1
                try:
                    try:
                        name, args, kwargs = loads(frame)
                        answer: tuple[Any, ...] = ("ok", self.handler(name, tuple(args), dict(kwargs)))
                    except pickle.UnpicklingError as exc:
                        answer = ("err", "InvalidInput", f"refused: {exc}", {})
                    except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                        answer = ("err", *encode_error(exc))
                    _send(conn, dumps(answer))
                finally:
                    with self._lock:
                        self.served += 1
                        self._busy -= 1
                        self._lock.notify_all()
        except OSError:
            return  # the caller went away; what it asked for is done or failed here as usual
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def close(self, wait: float = 30.0) -> None:
        """Stop taking calls; calls running finish and are answered first (up to ``wait`` seconds)."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)  # wakes idle readers; a running call can still answer
            self._lock.wait_for(lambda: self._busy == 0, timeout=wait)


class WriterRelay:
    """Which process writes to one token, and the way to it from the others.

    ``leading()`` answers whether this process is the writer, taking the role
    when nobody holds it; ``call()`` sends a call to the writer.  Both block
    (a socket round trip): run them on the token's worker threads.
    """

    def __init__(self, stem: Path, handler: Handler) -> None:
        self.lock_path = stem.with_name(stem.name + ".lock")
        self.socket_path = stem.with_name(stem.name + ".sock")
        self.handler = handler
        self._lock_fd: int | None = None
        self._server: _Server | None = None
        self._mutex = threading.Lock()
        self._idle: list[socket.socket] = []
        self._closed = False
        self._alone = False  # the shared files cannot be used: this process makes its own changes
        self.relayed = 0  # calls this process sent to the writer: for tests and metrics

    @property
    def served(self) -> int:
        """Calls this process ran for others while it was the writer."""
        return self._server.served if self._server is not None else 0

    @property
    def is_writer(self) -> bool:
        """Whether this process holds the role now (without trying to take it)."""
        return self._server is not None

    def leading(self) -> bool:
        """Whether this process makes its changes itself: it is the writer (taking the role
        if it is free), or it cannot use the shared files."""
        if self._server is not None or self._alone:
            return True
        with self._mutex:
            if self._server is not None or self._alone:
                return True
            if self._closed:
                return False
            try:
                if self._lock_fd is None:
                    self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as exc:
                return self._go_alone(exc)
            try:
                self._server = _Server(self.socket_path, self.handler)
            except OSError as exc:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                return self._go_alone(exc)
            self._drop_connections()
            log.info("this process now makes every object change on its token (%s)", self.socket_path)
            return True

    def _go_alone(self, exc: OSError) -> bool:
        log.warning("cannot use the writer files %s (%s): this process makes its own object changes, and the "
                    "token re-reads its folder for them in the other processes (run every gateway process on "
                    "this token as one user)", self.lock_path, exc)
        self._alone = True
        return True

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``name(*args, **kwargs)`` in the writer.  Raises the writer's error, ``NoWriter`` when none
        answers (nothing was sent), or ``WriterLost`` when the connection broke after sending."""
        request = dumps((name, args, kwargs))
        sock = self._connection()
        try:
            _send(sock, request)
        except OSError:
            sock.close()
            raise NoWriter() from None  # nothing reached a writer
        try:
            frame = _recv(sock)
        except OSError:
            frame = None
        if frame is None:
            sock.close()
            with self._mutex:
                # The other idle connections led to the same writer: reusing them would only
                # lose more calls (each one looked for in the token) before reconnecting.
                self._drop_connections()
            raise WriterLost()
        with self._mutex:
            self._idle.append(sock)
            self.relayed += 1
        answer = loads(frame)
        if answer[0] == "ok":
            return answer[1]
        raise decode_error(*answer[1:])

    def _connection(self) -> socket.socket:
        with self._mutex:
            if self._idle:
                return self._idle.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CALL_SECONDS)
        try:
            sock.connect(str(self.socket_path))
        except PermissionError as exc:  # the writer runs as another user
            sock.close()
            self._go_alone(exc)
            raise NoWriter() from None
        except OSError:
            sock.close()
            raise NoWriter() from None
        return sock

    def _drop_connections(self) -> None:
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._drop_connections()
            if self._server is not None:
                self._server.close()
                self._server = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock: another process may take over
                self._lock_fd = None
