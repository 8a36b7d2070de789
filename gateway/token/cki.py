"""Thin ctypes binding of the PKCS#11 function list.

Why not python-pkcs11's session objects: it always calls ``C_Initialize(NULL)``
(SoftHSM2 then runs without locks and NSS refuses), it binds every object to
the session that found it (a pooled, multi-threaded adapter needs plain
handles usable from any session), and its closed enums lack PKCS#11 3.0
mechanisms.  We keep python-pkcs11 for its constant tables and for the raw
baselines in the benchmarks.  ctypes releases the GIL around every call, so
worker threads run token calls in parallel.
"""

from __future__ import annotations

import ctypes
import threading
from ctypes import POINTER, Structure, byref, c_char_p, c_ubyte, c_ulong, c_void_p
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .constants import CKR, ckr_name

if TYPE_CHECKING:
    from .scangate import ScanGate

CK_ULONG = c_ulong
CK_RV = c_ulong
CK_BBOOL = c_ubyte
CK_BYTE_P = POINTER(c_ubyte)

CK_UNAVAILABLE_INFORMATION = CK_ULONG(-1).value


class CK_VERSION(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class CK_INFO(Structure):
    _fields_ = [
        ("cryptokiVersion", CK_VERSION),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", CK_ULONG),
        ("libraryDescription", ctypes.c_char * 32),
        ("libraryVersion", CK_VERSION),
    ]


class CK_TOKEN_INFO(Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("ulMaxSessionCount", CK_ULONG),
        ("ulSessionCount", CK_ULONG),
        ("ulMaxRwSessionCount", CK_ULONG),
        ("ulRwSessionCount", CK_ULONG),
        ("ulMaxPinLen", CK_ULONG),
        ("ulMinPinLen", CK_ULONG),
        ("ulTotalPublicMemory", CK_ULONG),
        ("ulFreePublicMemory", CK_ULONG),
        ("ulTotalPrivateMemory", CK_ULONG),
        ("ulFreePrivateMemory", CK_ULONG),
        ("hardwareVersion", CK_VERSION),
        ("firmwareVersion", CK_VERSION),
        ("utcTime", ctypes.c_char * 16),
    ]


class CK_ATTRIBUTE(Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", c_void_p), ("ulValueLen", CK_ULONG)]


class CK_MECHANISM(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class CK_C_INITIALIZE_ARGS(Structure):
    _fields_ = [
        ("CreateMutex", c_void_p),
        ("DestroyMutex", c_void_p),
        ("LockMutex", c_void_p),
        ("UnlockMutex", c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", c_void_p),
    ]


class CK_ECDH1_DERIVE_PARAMS(Structure):
    _fields_ = [
        ("kdf", CK_ULONG),
        ("ulSharedDataLen", CK_ULONG),
        ("pSharedData", c_void_p),
        ("ulPublicDataLen", CK_ULONG),
        ("pPublicData", c_void_p),
    ]


class CK_HKDF_PARAMS(Structure):
    _fields_ = [
        ("bExtract", CK_BBOOL),
        ("bExpand", CK_BBOOL),
        ("prfHashMechanism", CK_ULONG),
        ("ulSaltType", CK_ULONG),
        ("pSalt", c_void_p),
        ("ulSaltLen", CK_ULONG),
        ("hSaltKey", CK_ULONG),
        ("pInfo", c_void_p),
        ("ulInfoLen", CK_ULONG),
    ]


class CK_GCM_PARAMS(Structure):
    _fields_ = [
        ("pIv", c_void_p),
        ("ulIvLen", CK_ULONG),
        ("ulIvBits", CK_ULONG),
        ("pAAD", c_void_p),
        ("ulAADLen", CK_ULONG),
        ("ulTagBits", CK_ULONG),
    ]


class CK_SALSA20_CHACHA20_POLY1305_PARAMS(Structure):
    _fields_ = [
        ("pNonce", c_void_p),
        ("ulNonceLen", CK_ULONG),
        ("pAAD", c_void_p),
        ("ulAADLen", CK_ULONG),
    ]


# Order of CK_FUNCTION_LIST (PKCS#11 2.40, unchanged as the prefix of 3.0).
_FUNCTIONS = (
    "C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo "
    "C_GetTokenInfo C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN "
    "C_OpenSession C_CloseSession C_CloseAllSessions C_GetSessionInfo C_GetOperationState "
    "C_SetOperationState C_Login C_Logout C_CreateObject C_CopyObject C_DestroyObject "
    "C_GetObjectSize C_GetAttributeValue C_SetAttributeValue C_FindObjectsInit C_FindObjects "
    "C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal C_DecryptInit "
    "C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate C_DigestKey "
    "C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal C_SignRecoverInit C_SignRecover "
    "C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal C_VerifyRecoverInit C_VerifyRecover "
    "C_DigestEncryptUpdate C_DecryptDigestUpdate C_SignEncryptUpdate C_DecryptVerifyUpdate "
    "C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey C_DeriveKey C_SeedRandom "
    "C_GenerateRandom C_GetFunctionStatus C_CancelFunction C_WaitForSlotEvent"
).split()


class CK_FUNCTION_LIST(Structure):
    # Every entry returns CK_RV; argument types are declared per call site
    # through the generic void-pointer prototype below.
    _fields_ = [("version", CK_VERSION)] + [(name, c_void_p) for name in _FUNCTIONS]


class CKRError(Exception):
    """A PKCS#11 call returned something other than CKR_OK."""

    def __init__(self, rv: int, function: str) -> None:
        self.rv = rv
        self.function = function
        self.name = ckr_name(rv)
        super().__init__(f"{function} returned {self.name}")


def _prototype(name: str) -> Any:
    # All arguments are passed as CK_ULONG or pointers (both 64-bit on LP64);
    # declaring them c_void_p/c_ulong keeps ctypes from guessing int widths.
    argtypes: dict[str, list[Any]] = {
        "C_Initialize": [c_void_p],
        "C_Finalize": [c_void_p],
        "C_GetInfo": [c_void_p],
        "C_GetSlotList": [CK_BBOOL, c_void_p, c_void_p],
        "C_GetTokenInfo": [CK_ULONG, c_void_p],
        "C_GetMechanismList": [CK_ULONG, c_void_p, c_void_p],
        "C_InitToken": [CK_ULONG, c_char_p, CK_ULONG, c_char_p],
        "C_OpenSession": [CK_ULONG, CK_ULONG, c_void_p, c_void_p, c_void_p],
        "C_CloseSession": [CK_ULONG],
        "C_CloseAllSessions": [CK_ULONG],
        "C_Login": [CK_ULONG, CK_ULONG, c_char_p, CK_ULONG],
        "C_Logout": [CK_ULONG],
        "C_CreateObject": [CK_ULONG, c_void_p, CK_ULONG, c_void_p],
        "C_CopyObject": [CK_ULONG, CK_ULONG, c_void_p, CK_ULONG, c_void_p],
        "C_DestroyObject": [CK_ULONG, CK_ULONG],
        "C_GetAttributeValue": [CK_ULONG, CK_ULONG, c_void_p, CK_ULONG],
        "C_SetAttributeValue": [CK_ULONG, CK_ULONG, c_void_p, CK_ULONG],
        "C_FindObjectsInit": [CK_ULONG, c_void_p, CK_ULONG],
        "C_FindObjects": [CK_ULONG, c_void_p, CK_ULONG, c_void_p],
        "C_FindObjectsFinal": [CK_ULONG],
        "C_EncryptInit": [CK_ULONG, c_void_p, CK_ULONG],
        "C_Encrypt": [CK_ULONG, c_void_p, CK_ULONG, c_void_p, c_void_p],
        "C_DecryptInit": [CK_ULONG, c_void_p, CK_ULONG],
        "C_Decrypt": [CK_ULONG, c_void_p, CK_ULONG, c_void_p, c_void_p],
        "C_SignInit": [CK_ULONG, c_void_p, CK_ULONG],
        "C_Sign": [CK_ULONG, c_void_p, CK_ULONG, c_void_p, c_void_p],
        "C_VerifyInit": [CK_ULONG, c_void_p, CK_ULONG],
        "C_Verify": [CK_ULONG, c_void_p, CK_ULONG, c_void_p, CK_ULONG],
        "C_GenerateKey": [CK_ULONG, c_void_p, c_void_p, CK_ULONG, c_void_p],
        "C_GenerateKeyPair": [
            CK_ULONG, c_void_p, c_void_p, CK_ULONG, c_void_p, CK_ULONG, c_void_p, c_void_p,
        ],
        "C_DeriveKey": [CK_ULONG, c_void_p, CK_ULONG, c_void_p, CK_ULONG, c_void_p],
        "C_GenerateRandom": [CK_ULONG, c_void_p, CK_ULONG],
        "C_GetSessionInfo": [CK_ULONG, c_void_p],
    }[name]
    return ctypes.CFUNCTYPE(CK_RV, *argtypes)


OBJECT_CHANGING = frozenset(
    "C_CreateObject C_CopyObject C_DestroyObject C_GenerateKey C_GenerateKeyPair C_DeriveKey C_UnwrapKey".split())

# Where each creating call the adapter makes has its templates (pointer, count) and its new
# handles (out pointers).  Object-changing calls not listed here count as token changes.
_TEMPLATES: dict[str, tuple[tuple[int, int], ...]] = {
    "C_CreateObject": ((1, 2),), "C_GenerateKey": ((2, 3),), "C_GenerateKeyPair": ((2, 3), (4, 5)),
    "C_DeriveKey": ((3, 4),),
}
_NEW_HANDLES: dict[str, tuple[int, ...]] = {
    "C_CreateObject": (3,), "C_GenerateKey": (4,), "C_GenerateKeyPair": (6, 7), "C_DeriveKey": (5,),
}
_CKA_TOKEN = 0x1
_MAX_SESSION_OBJECTS = 65536  # remembered handles; beyond, destroys count as token-object changes


def _template_says_token(ptr: Any, count: Any) -> bool:
    """CKA_TOKEN of a Template's attribute array (false when absent, as for the module); True when unreadable."""
    if ptr is None or not count:
        return False
    array = getattr(ptr, "_obj", None)  # byref() keeps the object it points to
    if not isinstance(array, ctypes.Array):
        return True
    for i in range(min(int(count), len(array))):
        entry = array[i]
        if entry.type == _CKA_TOKEN:
            return bool(entry.pValue) and entry.ulValueLen >= 1 and ctypes.cast(entry.pValue, CK_BYTE_P)[0] != 0
    return False


def _new_handles(name: str, args: tuple[Any, ...]) -> list[int]:
    out = []
    for i in _NEW_HANDLES[name]:
        obj = getattr(args[i], "_obj", None)
        if isinstance(obj, c_ulong):
            out.append(obj.value)
    return out


class FunctionList:
    """Callable view of a module's CK_FUNCTION_LIST; raises CKRError on failure."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        get_list = lib.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = [c_void_p]
        ptr = POINTER(CK_FUNCTION_LIST)()
        rv = get_list(byref(ptr))
        if rv != CKR.OK:
            raise CKRError(rv, "C_GetFunctionList")
        self._list = ptr.contents
        self._cache: dict[str, Any] = {}
        # Calls that changed token objects so far: SoftHSM2 may then hide other processes'
        # objects from this one (staleview.py).  Counted before the call.
        self.writes = 0
        self._writes_lock = threading.Lock()
        self._session_objects: set[int] = set()  # handles of session objects this process made
        # SoftHSM2 only: scans and other processes' writes kept apart (scangate.py).
        self.gate: ScanGate | None = None

    def raw(self, name: str) -> Any:
        fn = self._cache.get(name)
        if fn is None:
            fn = _prototype(name)(getattr(self._list, name))
            if name in OBJECT_CHANGING:
                fn = self._counted(name, fn)
            elif name == "C_FindObjectsInit":
                fn = self._scan(fn)
            self._cache[name] = fn
        return fn

    def _counted(self, name: str, fn: Any) -> Any:
        # Calls that make or destroy session objects only (the ECDH secret that is read and
        # destroyed, probes) change no token file: they are neither counted nor gated.  Session
        # objects are told apart by the CKA_TOKEN of the template that made them.
        templates = _TEMPLATES.get(name, ())
        destroys = name == "C_DestroyObject"

        def call(*args: Any) -> Any:
            if destroys:
                session_object = args[1] in self._session_objects
                if session_object:
                    with self._writes_lock:
                        self._session_objects.discard(args[1])
            else:
                session_object = bool(templates) and not any(_template_says_token(args[p], args[c]) for p, c in templates)
            if session_object:
                rv = fn(*args)
                if templates and rv == CKR.OK:
                    with self._writes_lock:
                        if len(self._session_objects) > _MAX_SESSION_OBJECTS:
                            self._session_objects.clear()
                        self._session_objects.update(_new_handles(name, args))
                return rv
            with self._writes_lock:
                self.writes += 1
            gate = self.gate
            if gate is None:
                return fn(*args)
            with gate.writing():
                return fn(*args)
        return call

    def forget_session_objects(self) -> None:
        with self._writes_lock:
            self._session_objects.clear()

    def _scan(self, fn: Any) -> Any:
        # SoftHSM2 matches every object of the token inside C_FindObjectsInit.
        def call(*args: Any) -> Any:
            gate = self.gate
            if gate is None:
                return fn(*args)
            with gate.scanning():
                return fn(*args)
        return call

    def __call__(self, name: str, *args: Any) -> None:
        rv = self.raw(name)(*args)
        if rv != CKR.OK:
            raise CKRError(rv, name)


_PACKED: dict[tuple[type, int], Any] = {}


def _packed(value: bool | int) -> Any:
    """A shared buffer for a CK_BBOOL/CK_ULONG template value.

    Modules only read template values, so one immutable buffer per value can
    serve every template in every thread; this saves most of the per-call
    ctypes allocations of a 16-attribute template.
    """
    key = (type(value), int(value))
    buf = _PACKED.get(key)
    if buf is None:
        buf = CK_BBOOL(1 if value else 0) if isinstance(value, bool) else CK_ULONG(value)
        _PACKED[key] = buf
    return buf


class Template:
    """A CK_ATTRIBUTE array built from {attribute: value}, keeping its buffers alive.

    Values: bool -> CK_BBOOL, int -> CK_ULONG, bytes -> byte array, str -> UTF-8.
    """

    def __init__(self, attrs: Mapping[int, Any]) -> None:
        self._keep: list[Any] = []
        self.count = len(attrs)
        self.array = (CK_ATTRIBUTE * max(self.count, 1))()
        for i, (atype, value) in enumerate(attrs.items()):
            entry = self.array[i]
            entry.type = atype
            if isinstance(value, (bool, int)):
                buf = _packed(value)
                entry.pValue = ctypes.addressof(buf)
                entry.ulValueLen = ctypes.sizeof(buf)
                continue
            raw = value.encode() if isinstance(value, str) else bytes(value)
            if raw:
                buf = ctypes.create_string_buffer(raw, len(raw))
                self._keep.append(buf)
                entry.pValue = ctypes.addressof(buf)
            entry.ulValueLen = len(raw)

    @property
    def pointer(self) -> Any:
        return byref(self.array) if self.count else None


class Mechanism:
    """A CK_MECHANISM with an optional parameter structure (kept alive with it)."""

    def __init__(self, mechanism: int, param: Any = None, keep: Iterable[Any] = ()) -> None:
        self._keep = [param, *keep]
        self.struct = CK_MECHANISM(mechanism, None, 0)
        if param is not None:
            if isinstance(param, (bytes, bytearray)):
                buf = ctypes.create_string_buffer(bytes(param), len(param))
                self._keep.append(buf)
                self.struct.pParameter = ctypes.cast(buf, c_void_p)
                self.struct.ulParameterLen = len(param)
            else:
                self.struct.pParameter = ctypes.cast(byref(param), c_void_p)
                self.struct.ulParameterLen = ctypes.sizeof(param)

    @property
    def pointer(self) -> Any:
        return byref(self.struct)


def byte_buffer(data: bytes) -> Any:
    """A ctypes buffer holding ``data`` (for pointers inside parameter structs)."""
    return ctypes.create_string_buffer(data, len(data)) if data else None


def address(buf: Any) -> Any:
    return ctypes.cast(buf, c_void_p) if buf is not None else None
