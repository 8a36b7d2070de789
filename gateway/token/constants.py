"""PKCS#11 numbers the adapter uses.

Values that python-pkcs11 knows are taken from its enums so there is one
source of truth; PKCS#11 3.0 values its closed enums lack are written here.
"""

from __future__ import annotations

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass


class CKA:
    CLASS = int(Attribute.CLASS)
    TOKEN = int(Attribute.TOKEN)
    PRIVATE = int(Attribute.PRIVATE)
    LABEL = int(Attribute.LABEL)
    APPLICATION = int(Attribute.APPLICATION)
    VALUE = int(Attribute.VALUE)
    CHECK_VALUE = int(Attribute.CHECK_VALUE)
    KEY_TYPE = int(Attribute.KEY_TYPE)
    ID = int(Attribute.ID)
    SENSITIVE = int(Attribute.SENSITIVE)
    ENCRYPT = int(Attribute.ENCRYPT)
    DECRYPT = int(Attribute.DECRYPT)
    WRAP = int(Attribute.WRAP)
    UNWRAP = int(Attribute.UNWRAP)
    SIGN = int(Attribute.SIGN)
    VERIFY = int(Attribute.VERIFY)
    DERIVE = int(Attribute.DERIVE)
    VALUE_LEN = int(Attribute.VALUE_LEN)
    EXTRACTABLE = int(Attribute.EXTRACTABLE)
    NEVER_EXTRACTABLE = int(Attribute.NEVER_EXTRACTABLE)
    ALWAYS_SENSITIVE = int(Attribute.ALWAYS_SENSITIVE)
    MODIFIABLE = int(Attribute.MODIFIABLE)
    EC_PARAMS = int(Attribute.EC_PARAMS)
    EC_POINT = int(Attribute.EC_POINT)


class CKO:
    DATA = int(ObjectClass.DATA)
    PUBLIC_KEY = int(ObjectClass.PUBLIC_KEY)
    PRIVATE_KEY = int(ObjectClass.PRIVATE_KEY)
    SECRET_KEY = int(ObjectClass.SECRET_KEY)


class CKK:
    EC = int(KeyType.EC)
    GENERIC_SECRET = int(KeyType.GENERIC_SECRET)
    AES = int(KeyType.AES)
    EC_EDWARDS = int(KeyType.EC_EDWARDS)
    EC_MONTGOMERY = 0x41  # PKCS#11 3.0
    CHACHA20 = 0x33  # PKCS#11 3.0
    HKDF = 0x42  # PKCS#11 3.0


class CKM:
    EC_KEY_PAIR_GEN = int(Mechanism.EC_KEY_PAIR_GEN)
    EC_EDWARDS_KEY_PAIR_GEN = int(Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
    EC_MONTGOMERY_KEY_PAIR_GEN = 0x1056
    ECDSA = int(Mechanism.ECDSA)
    ECDSA_SHA256 = int(Mechanism.ECDSA_SHA256)
    ECDSA_SHA384 = int(Mechanism.ECDSA_SHA384)
    ECDSA_SHA512 = int(Mechanism.ECDSA_SHA512)
    EDDSA = int(Mechanism.EDDSA)
    ECDH1_DERIVE = int(Mechanism.ECDH1_DERIVE)
    AES_KEY_GEN = int(Mechanism.AES_KEY_GEN)
    AES_GCM = int(Mechanism.AES_GCM)
    AES_ECB = int(Mechanism.AES_ECB)
    GENERIC_SECRET_KEY_GEN = int(Mechanism.GENERIC_SECRET_KEY_GEN)
    SHA256 = int(Mechanism.SHA256)
    SHA384 = int(Mechanism.SHA384)
    SHA512 = int(Mechanism.SHA512)
    SHA256_HMAC = int(Mechanism.SHA256_HMAC)
    SHA384_HMAC = int(Mechanism.SHA384_HMAC)
    SHA512_HMAC = int(Mechanism.SHA512_HMAC)
    SHA3_256_HMAC = 0x2B1
    SHA3_384_HMAC = 0x2C1
    SHA3_512_HMAC = 0x2D1
    SP800_108_COUNTER_KDF = 0x3AC
    CHACHA20_KEY_GEN = 0x1225
    CHACHA20 = 0x1226
    CHACHA20_POLY1305 = 0x4021
    HKDF_DERIVE = 0x402A
    HKDF_DATA = 0x402B
    HKDF_KEY_GEN = 0x402C


class CKD:
    NULL = 0x1
    SHA1_KDF = 0x2
    SHA224_KDF = 0x5
    SHA256_KDF = 0x6
    SHA384_KDF = 0x7
    SHA512_KDF = 0x8


CKF_OS_LOCKING_OK = 0x2
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_LOGIN_REQUIRED = 0x4
CKF_USER_PIN_LOCKED = 0x40000
CKF_TOKEN_INITIALIZED = 0x400
CKF_HKDF_SALT_NULL = 0x1
CKF_HKDF_SALT_DATA = 0x2
CKU_USER = 1


class CKR:
    OK = 0x0
    HOST_MEMORY = 0x2
    SLOT_ID_INVALID = 0x3
    GENERAL_ERROR = 0x5
    FUNCTION_FAILED = 0x6
    ARGUMENTS_BAD = 0x7
    ATTRIBUTE_SENSITIVE = 0x11
    ATTRIBUTE_TYPE_INVALID = 0x12
    ATTRIBUTE_VALUE_INVALID = 0x13
    DATA_INVALID = 0x20
    DATA_LEN_RANGE = 0x21
    DEVICE_ERROR = 0x30
    DEVICE_MEMORY = 0x31
    DEVICE_REMOVED = 0x32
    ENCRYPTED_DATA_INVALID = 0x40
    ENCRYPTED_DATA_LEN_RANGE = 0x41
    FUNCTION_NOT_SUPPORTED = 0x54
    KEY_HANDLE_INVALID = 0x60
    KEY_SIZE_RANGE = 0x62
    KEY_TYPE_INCONSISTENT = 0x63
    KEY_FUNCTION_NOT_PERMITTED = 0x68
    MECHANISM_INVALID = 0x70
    MECHANISM_PARAM_INVALID = 0x71
    OBJECT_HANDLE_INVALID = 0x82
    OPERATION_ACTIVE = 0x90
    PIN_INCORRECT = 0xA0
    PIN_LOCKED = 0xA4
    SESSION_CLOSED = 0xB0
    SESSION_COUNT = 0xB1
    SESSION_HANDLE_INVALID = 0xB3
    SESSION_READ_ONLY = 0xB5
    SIGNATURE_INVALID = 0xC0
    SIGNATURE_LEN_RANGE = 0xC1
    TEMPLATE_INCOMPLETE = 0xD0
    TEMPLATE_INCONSISTENT = 0xD1
    TOKEN_NOT_PRESENT = 0xE0
    TOKEN_NOT_RECOGNIZED = 0xE1
    TOKEN_WRITE_PROTECTED = 0xE2
    USER_ALREADY_LOGGED_IN = 0x100
    USER_NOT_LOGGED_IN = 0x101
    USER_PIN_NOT_INITIALIZED = 0x102
    DOMAIN_PARAMS_INVALID = 0x130
    CURVE_NOT_SUPPORTED = 0x140
    BUFFER_TOO_SMALL = 0x150
    CRYPTOKI_NOT_INITIALIZED = 0x190
    CRYPTOKI_ALREADY_INITIALIZED = 0x191


_CKR_NAMES = {v: f"CKR_{k}" for k, v in vars(CKR).items() if not k.startswith("_")}


def ckr_name(rv: int) -> str:
    return _CKR_NAMES.get(rv, f"CKR_0x{rv:X}")


# Codes that mean "the session, the login or the token went away": the
# adapter reconnects, logs in again and retries once.
SESSION_GONE = frozenset({CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED, CKR.USER_NOT_LOGGED_IN})
TOKEN_GONE = frozenset(
    {
        CKR.DEVICE_REMOVED,
        CKR.TOKEN_NOT_PRESENT,
        CKR.TOKEN_NOT_RECOGNIZED,
        CKR.DEVICE_ERROR,
        CKR.SLOT_ID_INVALID,
        CKR.CRYPTOKI_NOT_INITIALIZED,
    }
)
HANDLE_GONE = frozenset({CKR.OBJECT_HANDLE_INVALID, CKR.KEY_HANDLE_INVALID})

_MECH_NAMES = {v: f"CKM_{k}" for k, v in vars(CKM).items() if not k.startswith("_")}


def ckm_name(mech: int) -> str:
    return _MECH_NAMES.get(mech, f"CKM_0x{mech:X}")
