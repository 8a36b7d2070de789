"""Loading and initialising PKCS#11 modules with real CK_C_INITIALIZE_ARGS."""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import byref
from typing import Any

from ..errors import ConfigError, TokenUnavailable
from .cki import CK_C_INITIALIZE_ARGS, CK_INFO, CK_TOKEN_INFO, CKRError, FunctionList
from .constants import CKF_OS_LOCKING_OK, CKR
from .keycopies import DeletionCounter
from .scangate import ScanGate
from .tokenfile import TokenFileLock


class SlotNotFound(TokenUnavailable):
    """No slot holds the configured token (yet: SoftHSM2 can miss a token whose
    files another process is rewriting while this one initialises)."""


class Module:
    """One loaded PKCS#11 library, initialised once per process.

    ``CKF_OS_LOCKING_OK`` is always set: SoftHSM2 initialised without it turns
    its mutexes off and crashes under threads.  ``init_args`` goes into
    ``pReserved`` (NSS softoken refuses to start without its configdir string).
    ``generation`` grows on every re-initialisation so holders of sessions and
    object handles know theirs are void.
    """

    def __init__(self, path: str, init_args: str | None, environment: dict[str, str]) -> None:
        self.path = path
        self.init_args = init_args
        self.environment = dict(environment)
        self.lock = threading.RLock()
        self.generation = 0
        self.initialized = False
        self.users = 0  # open Tokens on this module; the last one to close finalises it
        # Around the calls that read or rewrite SoftHSM2's token file (tokenfile.py); known
        # to be needed only once C_GetInfo has named the module.
        self.token_file = TokenFileLock(None)
        for key, value in self.environment.items():
            os.environ[key] = value
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as exc:
            raise ConfigError(f"cannot load PKCS#11 module {path}: {exc}") from exc
        self.fn = FunctionList(self._lib)
        self.initialize()
        info = CK_INFO()
        self.fn("C_GetInfo", byref(info))
        self.manufacturer = info.manufacturerID.decode(errors="replace").strip()
        self.description = info.libraryDescription.decode(errors="replace").strip()
        # Key objects destroyed by any gateway process on this token folder (keycopies.py).
        self.deletions: DeletionCounter | None = None
        if self.rereads_on_other_processes_writes:
            self.fn.gate = ScanGate.for_softhsm(self.environment)
            self.token_file = TokenFileLock.for_softhsm(self.environment)
            self.deletions = DeletionCounter.for_softhsm(self.environment)

    @property
    def hides_other_processes_objects(self) -> bool:
        """SoftHSM2 can hide objects other processes made from this one (staleview.py);
        no other module is known to (NSS softoken asks its database every time)."""
        return self.manufacturer.startswith("SoftHSM")

    @property
    def rereads_on_other_processes_writes(self) -> bool:
        """SoftHSM2 re-reads its token folder on an object access after another process's
        write, so scans must not overlap other processes' writes (scangate.py)."""
        return self.manufacturer.startswith("SoftHSM")

    @property
    def serializes_writes(self) -> bool:
        """NSS softoken keeps token objects in an sqlite database and stores them one at a
        time: concurrent creating calls gain nothing and only race for its lock, which
        stretches the latency tail (docs/benchmarks.md)."""
        return self.manufacturer.startswith("Mozilla")

    def initialize(self) -> None:
        args = CK_C_INITIALIZE_ARGS()
        args.flags = CKF_OS_LOCKING_OK
        self._reserved = ctypes.create_string_buffer(self.init_args.encode()) if self.init_args else None
        args.pReserved = ctypes.cast(self._reserved, ctypes.c_void_p) if self._reserved else None
        with self.token_file.held():
            rv = self.fn.raw("C_Initialize")(byref(args))
        if rv not in (CKR.OK, CKR.CRYPTOKI_ALREADY_INITIALIZED):
            raise TokenUnavailable(
                f"PKCS#11 module {self.path} failed to initialise: {CKRError(rv, 'C_Initialize').name}"
            )
        self.initialized = True

    def reinitialize(self, seen_generation: int) -> None:
        """Finalize and initialise again, once per failure however many threads saw it."""
        with self.lock:
            if self.generation != seen_generation:
                return
            self.fn.raw("C_Finalize")(None)
            self.fn.forget_session_objects()  # handle numbers start over
            self.initialized = False
            self.generation += 1
            self.initialize()

    def slots(self) -> list[int]:
        count = ctypes.c_ulong(0)
        self.fn("C_GetSlotList", 1, None, byref(count))
        ids = (ctypes.c_ulong * max(count.value, 1))()
        self.fn("C_GetSlotList", 1, ids, byref(count))
        return list(ids[: count.value])

    def token_info(self, slot: int) -> CK_TOKEN_INFO:
        info = CK_TOKEN_INFO()
        with self.token_file.held():
            self.fn("C_GetTokenInfo", slot, byref(info))
        return info

    def find_slot(self, label: str | None, serial: str | None) -> tuple[int, CK_TOKEN_INFO]:
        seen = []
        for slot in self.slots():
            try:
                info = self.token_info(slot)
            except CKRError:
                continue
            tlabel = info.label.decode(errors="replace").rstrip()
            tserial = info.serialNumber.decode(errors="replace").rstrip()
            seen.append(tlabel)
            if (label is None or tlabel == label) and (serial is None or tserial == serial):
                return slot, info
        wanted = f"label {label!r}" if label else f"serial {serial!r}"
        raise SlotNotFound(
            f"no token with {wanted} in {self.path} (tokens present: {', '.join(map(repr, seen)) or 'none'})"
        )

    def mechanisms(self, slot: int) -> frozenset[int]:
        count = ctypes.c_ulong(0)
        self.fn("C_GetMechanismList", slot, None, byref(count))
        mechs = (ctypes.c_ulong * max(count.value, 1))()
        self.fn("C_GetMechanismList", slot, mechs, byref(count))
        return frozenset(mechs[: count.value])

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
        self.finalize()

    def finalize(self) -> None:
        with self.lock:
            if self.initialized:
                self.fn.raw("C_Finalize")(None)
                self.initialized = False


_modules: dict[str, Module] = {}
_modules_lock = threading.Lock()


def load_module(path: str, init_args: str | None, environment: dict[str, str]) -> Module:
    """The process-wide Module for ``path``; a module is initialised once per process,
    so two configs asking for different init strings or environments are an error."""
    real = os.path.realpath(path)
    with _modules_lock:
        module = _modules.get(real)
        if module is None:
            module = Module(real, init_args, environment)
            _modules[real] = module
            return module
    if module.init_args != init_args or any(
        module.environment.get(k) != v for k, v in environment.items()
    ):
        raise ConfigError(
            f"module {path} is already initialised with other init_args/environment; "
            "a PKCS#11 module is initialised once per process"
        )
    if not module.initialized:
        module.initialize()
    return module


def loaded_modules() -> list[Module]:
    with _modules_lock:
        return list(_modules.values())


def _unused(*_: Any) -> None:  # pragma: no cover - keeps linters quiet about Any
    pass
