"""Scans and other processes' writes are kept apart on SoftHSM2 (gateway/token/scangate.py).

The lock itself is checked between real processes (flock is per open file, so
threads and processes both count); the SoftHSM2 adapter is checked to hold it
around C_FindObjectsInit and around calls that change token objects (not around
session objects), and NSS softoken to have none.  The slow scan it prevents
(SoftHSM2 re-reading its folder on every object a scan touches while another
process writes) is the reliability suite's "sessions closed" fault at full size
(make stress).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.token import Curve, SecretSpec, SecretType, Token, Usage
from gateway.token.scangate import ScanGate, softhsm_token_dir

# A child that takes the gate (``write`` or ``scan``), says "got" once it holds it, and lets go
# when told to on its stdin.
_HOLDER = """
import sys
from pathlib import Path
from gateway.token.scangate import ScanGate
gate = ScanGate(Path(sys.argv[1]))
hold = gate.writing() if sys.argv[2] == "write" else gate.scanning()
print("ready", flush=True)
with hold:
    print("got", flush=True)
    sys.stdin.readline()
print("left", flush=True)
"""


class Holder:
    def __init__(self, lock: Path, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""
        assert self.said(30) == "ready"

    def said(self, timeout: float) -> str | None:
        """The child's next line, or None if it says nothing within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        assert self.said(30) == "left"
        self.proc.wait(30)


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done


def test_a_scan_waits_for_another_processs_write(tmp_path: Path) -> None:
    lock = tmp_path / "gate.lock"
    writer = Holder(lock, "write")
    assert writer.said(30) == "got"
    gate = ScanGate(lock)

    def scan() -> None:
        with gate.scanning():
            pass

    thread, done = _in_thread(scan)
    assert not done.wait(0.5)  # held off by the write
    writer.release()
    assert done.wait(30)
    thread.join()


def test_another_processs_write_waits_for_a_scan(tmp_path: Path) -> None:
    lock = tmp_path / "gate.lock"
    gate = ScanGate(lock)
    entered, leave = threading.Event(), threading.Event()

    def scan() -> None:
        with gate.scanning():
            entered.set()
            leave.wait(30)

    thread, _ = _in_thread(scan)
    assert entered.wait(30)
    writer = Holder(lock, "write")
    assert writer.said(0.5) is None  # held off by the scan
    leave.set()
    thread.join()
    assert writer.said(30) == "got"
    writer.release()


def test_writers_share_and_a_process_scans_in_several_threads_at_once(tmp_path: Path) -> None:
    lock = tmp_path / "gate.lock"
    first, second = Holder(lock, "write"), Holder(lock, "write")
    assert first.said(30) == "got" and second.said(30) == "got"  # both hold it at once
    first.release()
    second.release()

    gate = ScanGate(lock)
    together = threading.Barrier(3, timeout=30)  # broken if one scan waited for another

    def scan() -> None:
        with gate.scanning():
            together.wait()

    threads = [_in_thread(scan) for _ in range(3)]
    for thread, done in threads:
        thread.join()
        assert done.is_set()


def test_a_write_inside_a_scan_of_the_same_thread_does_not_wait(tmp_path: Path) -> None:
    gate = ScanGate(tmp_path / "gate.lock")

    def nested() -> None:
        with gate.scanning(), gate.scanning(), gate.writing():
            pass

    thread, done = _in_thread(nested)
    assert done.wait(30)
    thread.join()
    with gate.writing():  # and the hold is gone afterwards
        pass


def test_softhsm_tokens_are_gated_by_their_token_folder_and_nss_is_not(softhsm_settings, nss_settings) -> None:  # type: ignore[no-untyped-def]
    settings = softhsm_settings("scangate")
    folder = softhsm_token_dir(settings.environment)
    assert folder is not None and Path(folder).is_dir()
    token = Token(settings)
    try:
        gate = token.module.fn.gate
        assert gate is not None and gate.lock_path is not None
        assert gate.lock_path == ScanGate.for_softhsm(settings.environment).lock_path
        # The adapter's scans and writes take the lock: a write elsewhere waits for this scan.
        with gate.scanning():
            other = Holder(gate.lock_path, "write")
            assert other.said(0.5) is None
            # this thread's own writes and lookups inside its scan go ahead
            token.get_key(token.generate_secret(SecretSpec(os.urandom(16), "gated", SecretType.AES, 32,
                                                           Usage(encrypt=True))).kid)
        assert other.said(30) == "got"
        other.release()
        # While another process scans: calls on session objects only (the ECDH secret, read and
        # destroyed) go ahead and do not count as token changes; a stored derive waits.
        base = os.urandom(16)
        token.generate_keypair(base, "gated", Curve.P256, Usage(derive=True))
        peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        scanner = Holder(gate.lock_path, "scan")
        assert scanner.said(30) == "got"
        writes = token.module.fn.writes
        assert len(token.ecdh_secret(base, peer=peer)) == 32
        assert token.module.fn.writes == writes
        stored, stored_done = _in_thread(lambda: token.ecdh_derive(
            base, SecretSpec(os.urandom(16), "gated", SecretType.AES, 32), peer=peer) and None)
        assert not stored_done.wait(0.5)
        scanner.release()
        assert stored_done.wait(30)
        stored.join()
        assert token.module.fn.writes == writes + 1
    finally:
        token.close()
    nss = Token(nss_settings)
    try:
        assert nss.module.fn.gate is None
    finally:
        nss.close()


def test_a_threads_lock_descriptors_close_when_it_ends(tmp_path: Path) -> None:
    gate = ScanGate(tmp_path / "gate.lock")
    before = len(os.listdir("/proc/self/fd"))

    def write() -> None:
        with gate.writing():
            pass

    for _ in range(20):
        thread, done = _in_thread(write)
        thread.join()
        assert done.is_set()
    assert len(os.listdir("/proc/self/fd")) - before < 4  # not two per thread that ever wrote
