"""The raw baseline: a plain python-pkcs11 loop in its own process.

Run as ``python -m bench.raw '<json config>'``; reads one JSON command per
line on stdin and answers one JSON line on stdout.  It never imports the
gateway: it is what an application would write by hand against the same
token, single-threaded.

Why a separate process: a PKCS#11 module is initialised once per process,
and python-pkcs11 calls ``C_Initialize(NULL)`` (SoftHSM2 then runs without
locks, fine for one thread) while the adapter uses ``CKF_OS_LOCKING_OK``.
NSS softoken refuses ``C_Initialize(NULL)``: for it we call ``C_Initialize``
ourselves through ctypes with the init string in ``pReserved`` and build
python-pkcs11's ``lib`` object without its ``__init__`` (``__new__`` runs
only ``__cinit__``, which loads the function list and initialises nothing).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from typing import Any, Callable

import pkcs11
import pkcs11._pkcs11
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from bench.floor import Floor
from bench.timing import timed_loop

CKF_OS_LOCKING_OK = 0x2
CKR_OK = 0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191


class _InitArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class _FunctionListHead(ctypes.Structure):
    # Only the prefix we need: version, C_Initialize.
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte), ("C_Initialize", ctypes.c_void_p)]


def _initialize_with_args(path: str, init_args: str) -> None:
    lib = ctypes.CDLL(path)
    get_list = lib.C_GetFunctionList
    get_list.restype = ctypes.c_ulong
    get_list.argtypes = [ctypes.c_void_p]
    head = ctypes.POINTER(_FunctionListHead)()
    rv = get_list(ctypes.byref(head))
    if rv != CKR_OK:
        raise RuntimeError(f"C_GetFunctionList returned {rv:#x}")
    init = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)(head.contents.C_Initialize)
    reserved = ctypes.create_string_buffer(init_args.encode())
    args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, ctypes.cast(reserved, ctypes.c_void_p))
    rv = init(ctypes.byref(args))
    if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
        raise RuntimeError(f"C_Initialize returned {rv:#x}")


def open_session(config: dict[str, Any]) -> Any:
    for key, value in config.get("env", {}).items():
        os.environ[key] = value
    path = config["module"]
    if config.get("init_args"):
        _initialize_with_args(path, config["init_args"])
        lib = pkcs11._pkcs11.lib.__new__(pkcs11._pkcs11.lib, path)  # type: ignore[call-arg]  # Cython __cinit__ takes it
    else:
        lib = pkcs11.lib(path)
    token = lib.get_token(token_label=config["label"])
    return token.open(rw=True, user_pin=config.get("pin"))


# The attributes the adapter sets on the keys it creates, so both sides ask
# the token for exactly the same objects.
STORED_AES = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.SIGN: False, Attribute.VERIFY: False,
    Attribute.DERIVE: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
}
SESSION_SECRET = {
    Attribute.TOKEN: False, Attribute.PRIVATE: True, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
    Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.SIGN: False, Attribute.VERIFY: False,
    Attribute.DERIVE: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
}


class Worker:
    def __init__(self, session: Any, module_path: str) -> None:
        self.session = session
        self.module_path = module_path
        self._kept: dict[bytes, Any] = {}

    def _base(self, cmd: dict[str, Any]) -> Any:
        return self.session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(cmd["base_kid"]))

    def _loop(self, cmd: dict[str, Any], op: Callable[[int], object]) -> dict[str, Any]:
        sample = timed_loop(op, threads=1, seconds=cmd["seconds"], warmup=cmd.get("warmup", 3),
                            max_ops=cmd.get("max_ops"), min_ops=cmd.get("min_ops", 1))
        return sample.to_dict()

    def derive_store(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """ECDH into a stored AES-256 key: one C_DeriveKey into a token object."""
        base, peer, label = self._base(cmd), bytes.fromhex(cmd["peer"]), cmd["label"]

        def op(_: int) -> None:
            base.derive_key(KeyType.AES, 256, id=os.urandom(16), label=label, store=True, template=STORED_AES,
                            mechanism=Mechanism.ECDH1_DERIVE, mechanism_param=(KDF.NULL, None, peer))

        return self._loop(cmd, op)

    def derive_session(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """What the adapter's ecdh_secret does: derive a readable session secret, read it, destroy it."""
        base, peer = self._base(cmd), bytes.fromhex(cmd["peer"])

        def op(_: int) -> None:
            key = base.derive_key(KeyType.GENERIC_SECRET, 256, id=b"", label="ecdh", store=False,
                                  template=SESSION_SECRET, mechanism=Mechanism.ECDH1_DERIVE,
                                  mechanism_param=(KDF.NULL, None, peer))
            try:
                key[Attribute.VALUE]
            finally:
                key.destroy()

        return self._loop(cmd, op)

    def _floor(self, cmd: dict[str, Any]) -> Floor:
        return Floor(self.module_path, self.session.handle, self._base(cmd).handle, bytes.fromhex(cmd["peer"]))

    def derive_store_floor(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._loop(cmd, self._floor(cmd).derive_store(cmd["label"]))

    def derive_session_floor(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._loop(cmd, self._floor(cmd).derive_session())

    def hkdf_store(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """HKDF-SHA256 of a stored secret into a stored ChaCha20 key: one C_DeriveKey (CKM_HKDF_DERIVE).

        python-pkcs11's closed Mechanism enum has no CKM_HKDF_DERIVE, so this loop
        makes the call in bare ctypes on python-pkcs11's session and key handle
        (as the floor does): the least Python an application could put around it.
        """
        parent = self.session.get_key(object_class=ObjectClass.SECRET_KEY, id=bytes.fromhex(cmd["base_kid"]))
        floor = Floor(self.module_path, self.session.handle, parent.handle, b"")
        op = floor.hkdf_store(cmd["label"], bytes.fromhex(cmd["salt"]), bytes.fromhex(cmd["info"]))
        return self._loop(cmd, op)

    def lookup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Find a secret key by CKA_ID (C_FindObjects), optionally use it for AES-GCM."""
        kids = [bytes.fromhex(k) for k in cmd["kids"]]
        encrypt = cmd.get("use") == "aes_gcm"
        iv, data = os.urandom(12), os.urandom(64)
        counter = [0]

        def op(_: int) -> None:
            counter[0] += 1
            key = self.session.get_key(object_class=ObjectClass.SECRET_KEY, id=kids[counter[0] % len(kids)])
            if encrypt:
                key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv))

        return self._loop(cmd, op)

    def cleanup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Destroy every secret key token object with this label (one scan, then destroys)."""
        started = time.perf_counter()
        found = list(self.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: cmd["label"]}))
        for obj in found:
            obj.destroy()
        return {"destroyed": len(found), "seconds": time.perf_counter() - started}

    def cleanup_marker(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Destroy every secret key token object whose label contains ``marker`` (one scan)."""
        started = time.perf_counter()
        marker = cmd["marker"]
        destroyed = 0
        for obj in list(self.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True})):
            try:
                label = obj[Attribute.LABEL]
            except pkcs11.PKCS11Error:
                continue  # destroyed by another process meanwhile
            if marker in (label or ""):
                obj.destroy()
                destroyed += 1
        return {"destroyed": destroyed, "seconds": time.perf_counter() - started}

    def read_timed(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Milliseconds of one CKA_ID read of the base key (handle found once, then kept), e.g. right
        after another process stored a key: SoftHSM2 then re-reads its token folder inside the read."""
        kid = bytes.fromhex(cmd["base_kid"])
        key = self._kept.get(kid)
        if key is None:
            key = self._kept[kid] = self._base(cmd)
            key[Attribute.ID]
        started = time.perf_counter()
        key[Attribute.ID]
        return {"ms": (time.perf_counter() - started) * 1000}

    def count_objects(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """How many token objects the token holds: all of them, and the keys among them."""
        keys = sum(1 for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY)
                   for _ in self.session.get_objects({Attribute.TOKEN: True, Attribute.CLASS: cls}))
        return {"objects": sum(1 for _ in self.session.get_objects({Attribute.TOKEN: True})), "keys": keys}

    def info(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"pkcs11_version": getattr(pkcs11, "__version__", None), "pid": os.getpid()}


def main() -> int:
    config = json.loads(sys.argv[1])
    out = sys.stdout
    # Only protocol lines on stdout; anything a module prints goes to stderr.
    sys.stdout = sys.stderr
    try:
        worker = Worker(open_session(config), config["module"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            result = {"ok": getattr(worker, cmd["op"])(cmd)}
        except Exception as exc:  # noqa: BLE001
            result = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
