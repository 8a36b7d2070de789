"""The floor: the same token calls as the raw loop with the least Python possible.

Used inside the raw worker, on python-pkcs11's own session and key handles
(the module is already initialised there): templates and the mechanism are
built once, each op is bare ctypes calls.  It shows how much of any loop's
time is the token's own work, so adapter/raw ratios can be read against it.
No gateway import: this is a baseline, not the adapter.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import POINTER, Structure, byref, c_ubyte, c_ulong, c_void_p
from typing import Any, Callable

CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_VALUE = 0x0, 0x1, 0x2, 0x3, 0x11
CKA_KEY_TYPE, CKA_ID, CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT = 0x100, 0x102, 0x103, 0x104, 0x105
CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY, CKA_DERIVE = 0x106, 0x107, 0x108, 0x10A, 0x10C
CKA_VALUE_LEN, CKA_EXTRACTABLE = 0x161, 0x162
CKO_SECRET_KEY, CKK_GENERIC_SECRET, CKK_AES, CKK_CHACHA20 = 4, 0x10, 0x1F, 0x33
CKM_ECDH1_DERIVE, CKD_NULL = 0x1050, 1
CKM_HKDF_DERIVE, CKM_SHA256, CKF_HKDF_SALT_DATA = 0x402A, 0x250, 0x2

_FUNCTIONS = (
    "C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo C_GetTokenInfo "
    "C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN C_OpenSession C_CloseSession "
    "C_CloseAllSessions C_GetSessionInfo C_GetOperationState C_SetOperationState C_Login C_Logout "
    "C_CreateObject C_CopyObject C_DestroyObject C_GetObjectSize C_GetAttributeValue C_SetAttributeValue "
    "C_FindObjectsInit C_FindObjects C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate "
    "C_EncryptFinal C_DecryptInit C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest "
    "C_DigestUpdate C_DigestKey C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal "
    "C_SignRecoverInit C_SignRecover C_VerifyInit C_Verify C_VerifyUpdate C_VerifyFinal "
    "C_VerifyRecoverInit C_VerifyRecover C_DigestEncryptUpdate C_DecryptDigestUpdate "
    "C_SignEncryptUpdate C_DecryptVerifyUpdate C_GenerateKey C_GenerateKeyPair C_WrapKey C_UnwrapKey "
    "C_DeriveKey"
).split()


class _Version(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class _FunctionList(Structure):
    _fields_ = [("version", _Version)] + [(n, c_void_p) for n in _FUNCTIONS]


class _Attribute(Structure):
    _fields_ = [("type", c_ulong), ("pValue", c_void_p), ("ulValueLen", c_ulong)]


class _Mechanism(Structure):
    _fields_ = [("mechanism", c_ulong), ("pParameter", c_void_p), ("ulParameterLen", c_ulong)]


class _Ecdh1Params(Structure):
    _fields_ = [("kdf", c_ulong), ("ulSharedDataLen", c_ulong), ("pSharedData", c_void_p),
                ("ulPublicDataLen", c_ulong), ("pPublicData", c_void_p)]


class _HkdfParams(Structure):
    _fields_ = [("bExtract", c_ubyte), ("bExpand", c_ubyte), ("prfHashMechanism", c_ulong),
                ("ulSaltType", c_ulong), ("pSalt", c_void_p), ("ulSaltLen", c_ulong), ("hSaltKey", c_ulong),
                ("pInfo", c_void_p), ("ulInfoLen", c_ulong)]


class _Template:
    """A CK_ATTRIBUTE array; ``buffer(t)`` gives the bytes behind one attribute (to refresh a CKA_ID)."""

    def __init__(self, attrs: list[tuple[int, Any]]) -> None:
        self.keep: dict[int, Any] = {}
        self.array = (_Attribute * len(attrs))()
        for i, (t, v) in enumerate(attrs):
            if isinstance(v, bool):
                buf: Any = c_ubyte(int(v))
                size = 1
            elif isinstance(v, int):
                buf = c_ulong(v)
                size = ctypes.sizeof(buf)
            else:
                raw = v.encode() if isinstance(v, str) else v
                buf = ctypes.create_string_buffer(raw, max(len(raw), 1))
                size = len(raw)
            self.keep[t] = buf
            self.array[i] = _Attribute(t, ctypes.cast(byref(buf), c_void_p), size)
        self.count = len(attrs)


def _secret_attrs(kind: int, length: int, token: bool, sensitive: bool, encrypt: bool, kid: bytes, label: str) -> list[tuple[int, Any]]:
    # The same attributes, in the same order, as the adapter's secret template.
    return [
        (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, kind), (CKA_TOKEN, token), (CKA_PRIVATE, True),
        (CKA_SENSITIVE, sensitive), (CKA_EXTRACTABLE, not sensitive), (CKA_VALUE_LEN, length), (CKA_ID, kid),
        (CKA_LABEL, label), (CKA_ENCRYPT, encrypt), (CKA_DECRYPT, encrypt), (CKA_SIGN, False),
        (CKA_VERIFY, False), (CKA_DERIVE, False), (CKA_WRAP, False), (CKA_UNWRAP, False),
    ]


class Floor:
    def __init__(self, module_path: str, session: int, base: int, peer: bytes) -> None:
        lib = ctypes.CDLL(module_path)  # the instance python-pkcs11 already initialised
        get_list = lib.C_GetFunctionList
        get_list.restype, get_list.argtypes = c_ulong, [c_void_p]
        ptr = POINTER(_FunctionList)()
        if get_list(byref(ptr)) != 0:
            raise RuntimeError("C_GetFunctionList failed")
        fl = ptr.contents
        u, p = c_ulong, c_void_p
        self._derive = ctypes.CFUNCTYPE(u, u, p, u, p, u, p)(fl.C_DeriveKey)
        self._get = ctypes.CFUNCTYPE(u, u, u, p, u)(fl.C_GetAttributeValue)
        self._destroy = ctypes.CFUNCTYPE(u, u, u)(fl.C_DestroyObject)
        self.session, self.base = session, base
        self._peer = ctypes.create_string_buffer(peer, len(peer))
        self._params = _Ecdh1Params(CKD_NULL, 0, None, len(peer), ctypes.cast(self._peer, c_void_p))
        self._mech = _Mechanism(CKM_ECDH1_DERIVE, ctypes.cast(byref(self._params), c_void_p), ctypes.sizeof(self._params))

    def _check(self, rv: int, what: str) -> None:
        if rv != 0:
            raise RuntimeError(f"{what} returned {rv:#x}")

    def derive_store(self, label: str) -> Callable[[int], None]:
        tpl = _Template(_secret_attrs(CKK_AES, 32, True, True, True, bytes(16), label))
        kid = tpl.keep[CKA_ID]
        out = c_ulong()

        def op(_: int) -> None:
            ctypes.memmove(kid, os.urandom(16), 16)
            self._check(self._derive(self.session, byref(self._mech), self.base, tpl.array, tpl.count, byref(out)), "C_DeriveKey")

        return op

    def derive_session(self) -> Callable[[int], None]:
        tpl = _Template(_secret_attrs(CKK_GENERIC_SECRET, 32, False, False, False, b"", "ecdh"))
        out = c_ulong()
        value = ctypes.create_string_buffer(64)
        attr = _Attribute(CKA_VALUE, ctypes.cast(value, c_void_p), 64)

        def op(_: int) -> None:
            self._check(self._derive(self.session, byref(self._mech), self.base, tpl.array, tpl.count, byref(out)), "C_DeriveKey")
            attr.ulValueLen = 64
            rv = self._get(self.session, out.value, byref(attr), 1)
            self._destroy(self.session, out.value)
            self._check(rv, "C_GetAttributeValue")

        return op

    def hkdf_store(self, label: str, salt: bytes, info: bytes) -> Callable[[int], None]:
        """CKM_HKDF_DERIVE (extract and expand, SHA-256) of the base secret into a stored ChaCha20 key."""
        tpl = _Template(_secret_attrs(CKK_CHACHA20, 32, True, True, True, bytes(16), label))
        kid = tpl.keep[CKA_ID]
        salt_buf = ctypes.create_string_buffer(salt, max(len(salt), 1))
        info_buf = ctypes.create_string_buffer(info, max(len(info), 1))
        params = _HkdfParams(1, 1, CKM_SHA256, CKF_HKDF_SALT_DATA, ctypes.cast(salt_buf, c_void_p), len(salt), 0,
                             ctypes.cast(info_buf, c_void_p), len(info))
        mech = _Mechanism(CKM_HKDF_DERIVE, ctypes.cast(byref(params), c_void_p), ctypes.sizeof(params))
        keep = (salt_buf, info_buf, params)
        out = c_ulong()

        def op(_: int) -> None:
            assert keep
            ctypes.memmove(kid, os.urandom(16), 16)
            self._check(self._derive(self.session, byref(mech), self.base, tpl.array, tpl.count, byref(out)),
                        "C_DeriveKey")

        return op
