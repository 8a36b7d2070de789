"""Every in-token primitive, checked against an independent software computation.

Derived keys are never extracted: they are used inside the token (AES-GCM,
HMAC, ChaCha20-Poly1305) and the result is checked with `cryptography`.
"""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x448, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from gateway.errors import InvalidInput, NotFound, Unsupported
from gateway.token import Curve, EcdhKdf, HashAlg, KeyClass, SecretSpec, SecretType, Token, Usage
from gateway.token.constants import CKA, CKO

SW_EC = {
    Curve.P256: ec.SECP256R1(),
    Curve.P384: ec.SECP384R1(),
    Curve.P521: ec.SECP521R1(),
    Curve.SECP256K1: ec.SECP256K1(),
}
ECDH_CURVES = [Curve.P256, Curve.P384, Curve.P521, Curve.SECP256K1, Curve.X25519, Curve.X448]


def kid() -> bytes:
    return os.urandom(16)


def software_peer(curve: Curve) -> tuple[object, dict[str, bytes]]:
    """A software key pair on ``curve`` and its public key in every accepted encoding."""
    if curve in SW_EC:
        priv = ec.generate_private_key(SW_EC[curve])
        pub = priv.public_key()
        forms = {
            "uncompressed": pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
            "compressed": pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint),
        }
    else:
        priv = x25519.X25519PrivateKey.generate() if curve is Curve.X25519 else x448.X448PrivateKey.generate()
        pub = priv.public_key()
        forms = {"raw": pub.public_bytes_raw()}
    forms["der"] = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    forms["pem"] = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, forms


def software_z(curve: Curve, priv: object, token_public: bytes) -> bytes:
    if curve in SW_EC:
        point = ec.EllipticCurvePublicKey.from_encoded_point(SW_EC[curve], token_public)
        return priv.exchange(ec.ECDH(), point)  # type: ignore[attr-defined]
    cls = x25519.X25519PublicKey if curve is Curve.X25519 else x448.X448PublicKey
    return priv.exchange(cls.from_public_bytes(token_public))  # type: ignore[attr-defined]


def gcm_roundtrip(token: Token, key_id: bytes, software_key: bytes) -> None:
    iv, aad, msg = os.urandom(12), b"header", os.urandom(45)
    sealed = token.aes_gcm(key_id, iv, msg, aad)
    assert AESGCM(software_key).decrypt(iv, sealed, aad) == msg
    # and the other way: software encrypts, the token decrypts
    assert token.aes_gcm(key_id, iv, AESGCM(software_key).encrypt(iv, msg, aad), aad, decrypt=True) == msg


def assert_protected(token: Token, info_kid: bytes) -> None:
    info = token.get_key(info_kid)
    assert info.sensitive is True
    assert info.extractable is False
    session = token.pool.acquire()
    try:
        handles = token._find(session.handle, {CKA.ID: info_kid, CKA.TOKEN: True})
        assert handles
        for handle in handles:
            attrs = token._attrs(session.handle, handle, (CKA.CLASS, CKA.VALUE, CKA.SENSITIVE, CKA.EXTRACTABLE))
            if attrs[CKA.SENSITIVE] is not None:  # private and secret halves
                assert attrs[CKA.VALUE] is None, "CKA_VALUE must be unreadable"
                assert attrs[CKA.SENSITIVE] == b"\x01" and attrs[CKA.EXTRACTABLE] == b"\x00"
    finally:
        token.pool.release(session)


# -- ECDH --------------------------------------------------------------------


@pytest.mark.parametrize("curve", ECDH_CURVES, ids=lambda c: c.value)
def test_ecdh_derive_aes_matches_software(token: Token, curve: Curve) -> None:
    if curve not in token.capabilities.ecdh_curves:
        with pytest.raises(Unsupported) as err:
            token.generate_keypair(kid(), "base", curve, Usage(derive=True))
        assert err.value.mechanism.startswith("CKM_")
        return
    base = kid()
    info = token.generate_keypair(base, "base", curve, Usage(derive=True))
    assert info.key_class is KeyClass.PRIVATE and info.curve is curve and info.public_key
    assert_protected(token, base)
    priv, forms = software_peer(curve)
    z = software_z(curve, priv, info.public_key)
    assert len(z) == curve.field_bytes
    for form, encoded in forms.items():
        out = kid()
        derived = token.ecdh_derive(base, SecretSpec(out, f"aes-{form}", SecretType.AES, 32), peer=encoded)
        assert derived.secret_type is SecretType.AES and derived.length == 32
        assert_protected(token, out)
        # CKD_NULL truncation keeps the last bytes of Z
        gcm_roundtrip(token, out, z[-32:])
        token.destroy(out)
    assert token.ecdh_secret(base, peer=forms["der"]) == z
    token.destroy(base)


def test_ecdh_secret_leaves_no_object(token: Token) -> None:
    """Z is a readable session object for three calls (made from one shared, non-private
    template): the value is right every time and nothing stays behind."""
    base = kid()
    info = token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    z = software_z(Curve.P256, priv, info.public_key)
    for _ in range(3):
        assert token.ecdh_secret(base, peer=forms["uncompressed"]) == z
    left = token._call(lambda s: token._find(s.handle, {CKA.CLASS: CKO.SECRET_KEY, CKA.LABEL: "ecdh"}))
    assert left == []
    token.destroy(base)


@pytest.mark.parametrize("length", [16, 24, 32])
def test_ecdh_output_aes_sizes(token: Token, length: int) -> None:
    base = kid()
    info = token.generate_keypair(base, "base", Curve.P384, Usage(derive=True))
    priv, forms = software_peer(Curve.P384)
    z = software_z(Curve.P384, priv, info.public_key)
    out = kid()
    token.ecdh_derive(base, SecretSpec(out, "aes", SecretType.AES, length), peer=forms["uncompressed"])
    gcm_roundtrip(token, out, z[-length:])


def ecdh_mac_key(token: Token) -> tuple[bytes, bytes]:
    """(kid, Z): a 32-byte HMAC key derived in the token by ECDH with a software peer, and its value
    computed in software (SoftHSM2 refuses HMAC keys shorter than the hash output)."""
    base = kid()
    info = token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    z = software_z(Curve.P256, priv, info.public_key)
    out = kid()
    token.ecdh_derive(base, SecretSpec(out, "mac", SecretType.GENERIC, 32, Usage(sign=True)), peer=forms["compressed"])
    return out, z


def test_ecdh_output_hmac_secret(token: Token) -> None:
    out, z = ecdh_mac_key(token)
    assert_protected(token, out)
    # SoftHSM2 refuses HMAC keys shorter than the hash output; a 32-byte Z suits SHA-256
    mac = token.hmac(out, HashAlg.SHA256, b"message")
    assert mac == hmac.new(z, b"message", "sha256").digest()
    assert token.hmac_verify(out, HashAlg.SHA256, b"message", mac)
    assert not token.hmac_verify(out, HashAlg.SHA256, b"message!", mac)


def test_hmac_through_a_session_copy(token: Token) -> None:
    """The audit trail's MAC key is used through a per-process session copy: the same MAC as the
    token object's, the copy as protected as the key, and made again after the sessions were lost."""
    key, z = ecdh_mac_key(token)
    want = hmac.new(z, b"record", "sha256").digest()
    assert token.hmac(key, HashAlg.SHA256, b"record", session_copy=True) == want
    copy = token._copies[key][1]
    attrs = token._call(lambda s: token._attrs(s.handle, copy, (CKA.TOKEN, CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.ID)))
    assert attrs == {CKA.TOKEN: b"\x00", CKA.SENSITIVE: b"\x01", CKA.EXTRACTABLE: b"\x00", CKA.ID: key}
    assert token.hmac(key, HashAlg.SHA256, b"record", session_copy=True) == want
    assert token._copies[key][1] == copy  # made once
    token.module.fn.raw("C_CloseAllSessions")(token.pool.slot)  # destroys the copy with its session
    assert token.hmac(key, HashAlg.SHA256, b"again", session_copy=True) == hmac.new(z, b"again", "sha256").digest()
    assert token.hmac(key, HashAlg.SHA256, b"again") == hmac.new(z, b"again", "sha256").digest()


def test_ecdh_with_stored_peer_keys(token: Token) -> None:
    a, b = kid(), kid()
    info_a = token.generate_keypair(a, "a", Curve.P256, Usage(derive=True))
    token.generate_keypair(b, "b", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    imported = kid()
    pub = token.import_public_key(imported, "peer", Curve.P256, forms["pem"])
    assert pub.key_class is KeyClass.PUBLIC and pub.public_key == forms["uncompressed"]
    z = software_z(Curve.P256, priv, info_a.public_key)
    out = kid()
    token.ecdh_derive(a, SecretSpec(out, "x", SecretType.AES, 32), peer_kid=imported)
    gcm_roundtrip(token, out, z)
    # two stored key pairs agree on the secret
    assert token.ecdh_secret(a, peer_kid=b) == token.ecdh_secret(b, peer_kid=a)


def test_x25519_import_of_stored_peer(token: Token) -> None:
    if Curve.X25519 not in token.capabilities.ecdh_curves:
        pytest.skip("no X25519 on this token")
    a = kid()
    info = token.generate_keypair(a, "a", Curve.X25519, Usage(derive=True))
    priv, forms = software_peer(Curve.X25519)
    imported = kid()
    token.import_public_key(imported, "peer", Curve.X25519, forms["raw"])
    assert token.ecdh_secret(a, peer_kid=imported) == software_z(Curve.X25519, priv, info.public_key)


@pytest.mark.parametrize("kdf,algo", [(EcdhKdf.SHA256, hashes.SHA256()), (EcdhKdf.SHA384, hashes.SHA384()), (EcdhKdf.SHA512, hashes.SHA512())])
def test_ecdh_x963_kdf(token: Token, kdf: EcdhKdf, algo: hashes.HashAlgorithm) -> None:
    base = kid()
    info = token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    out = kid()
    spec = SecretSpec(out, "x963", SecretType.AES, 32)
    if kdf not in token.capabilities.ecdh_kdfs:
        with pytest.raises(Unsupported) as err:
            token.ecdh_derive(base, spec, peer=forms["uncompressed"], kdf=kdf, shared_data=b"shared")
        assert err.value.mechanism == f"CKD_{kdf.name}_KDF"
        assert token.find_key(out) is None, "a refused derive must leave nothing behind"
        return
    token.ecdh_derive(base, spec, peer=forms["uncompressed"], kdf=kdf, shared_data=b"shared")
    z = software_z(Curve.P256, priv, info.public_key)
    gcm_roundtrip(token, out, X963KDF(algo, 32, b"shared").derive(z))


# -- peer validation -----------------------------------------------------------


def test_invalid_points_are_client_errors(token: Token) -> None:
    base = kid()
    token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    _, p256 = software_peer(Curve.P256)
    _, p384 = software_peer(Curve.P384)
    off_curve = bytearray(p256["uncompressed"])
    off_curve[-1] ^= 0x01
    bad = {
        "off-curve": bytes(off_curve),
        "wrong-curve raw": p384["uncompressed"],
        "wrong-curve der": p384["der"],
        "wrong-curve pem": p384["pem"],
        "truncated": p256["uncompressed"][:40],
        "bad prefix": b"\x05" + p256["uncompressed"][1:],
        "empty": b"",
        "garbage pem": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "x25519 der": software_peer(Curve.X25519)[1]["der"],
    }
    for name, point in bad.items():
        out = kid()
        with pytest.raises(InvalidInput):
            token.ecdh_derive(base, SecretSpec(out, name, SecretType.AES, 32), peer=point)
        assert token.find_key(out) is None, name
    with pytest.raises(InvalidInput):
        token.ecdh_derive(base, SecretSpec(kid(), "none", SecretType.AES, 32))
    with pytest.raises(InvalidInput):  # longer than Z with CKD_NULL
        token.ecdh_derive(base, SecretSpec(kid(), "long", SecretType.GENERIC, 48), peer=p256["der"])


def test_x25519_low_order_point_rejected(token: Token) -> None:
    if Curve.X25519 not in token.capabilities.ecdh_curves:
        pytest.skip("no X25519 on this token")
    base = kid()
    token.generate_keypair(base, "base", Curve.X25519, Usage(derive=True))
    with pytest.raises(InvalidInput):
        token.ecdh_secret(base, peer=bytes(32))


def test_wrong_curve_stored_peer(token: Token) -> None:
    a, b = kid(), kid()
    token.generate_keypair(a, "a", Curve.P256, Usage(derive=True))
    token.generate_keypair(b, "b", Curve.P384, Usage(derive=True))
    with pytest.raises(InvalidInput):
        token.ecdh_secret(a, peer_kid=b)


# -- HKDF ------------------------------------------------------------------------

RFC5869 = [
    # (IKM, salt, info, L, OKM) - test cases 1 and 3 of RFC 5869 (SHA-256)
    (
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (bytes.fromhex("0b" * 22), None, b"", 42, "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize("case", RFC5869, ids=["rfc5869-1", "rfc5869-3"])
def test_hkdf_rfc5869_vectors(token: Token, case: tuple) -> None:
    ikm, salt, info, length, okm_hex = case
    base = kid()
    token.import_secret(SecretSpec(base, "ikm", SecretType.GENERIC, len(ikm), Usage(derive=True)), ikm)
    out = kid()
    spec = SecretSpec(out, "okm", SecretType.GENERIC, length, Usage(sign=True))
    if not token.capabilities.hkdf:
        with pytest.raises(Unsupported) as err:
            token.hkdf_derive(base, spec, salt=salt, info=info)
        assert err.value.mechanism == "CKM_HKDF_DERIVE"
        assert token.find_key(out) is None
        return
    token.hkdf_derive(base, spec, salt=salt, info=info)
    assert_protected(token, out)
    okm = bytes.fromhex(okm_hex)
    assert token.hmac(out, HashAlg.SHA256, b"check") == hmac.new(okm, b"check", "sha256").digest()


@pytest.mark.parametrize("alg,sw", [(HashAlg.SHA384, hashes.SHA384()), (HashAlg.SHA512, hashes.SHA512())])
def test_hkdf_other_hashes_against_software(token: Token, alg: HashAlg, sw: hashes.HashAlgorithm) -> None:
    if alg not in token.capabilities.hkdf_hashes:
        pytest.skip("this token's HKDF lacks the hash (the SoftHSM2 case is covered by the vector test)")
    ikm = os.urandom(32)
    base = kid()
    token.import_secret(SecretSpec(base, "ikm", SecretType.GENERIC, 32, Usage(derive=True)), ikm)
    out = kid()
    token.hkdf_derive(base, SecretSpec(out, "aes", SecretType.AES, 32), salt=b"salt", info=b"info", hash_alg=alg)
    gcm_roundtrip(token, out, HKDF(sw, 32, b"salt", b"info").derive(ikm))


def test_ecdh_then_hkdf_in_token(token: Token) -> None:
    base = kid()
    info = token.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    out = kid()
    spec = SecretSpec(out, "aes", SecretType.AES, 32)
    if not token.capabilities.hkdf:
        with pytest.raises(Unsupported):
            token.ecdh_hkdf_derive(base, spec, salt=None, info=b"encedo-AES256", peer=forms["der"])
        assert token.find_key(out) is None
        return
    token.ecdh_hkdf_derive(base, spec, salt=None, info=b"encedo-AES256", peer=forms["der"])
    z = software_z(Curve.P256, priv, info.public_key)
    gcm_roundtrip(token, out, HKDF(hashes.SHA256(), 32, None, b"encedo-AES256").derive(z))


def test_chacha20_keys_where_supported(token: Token) -> None:
    parent = kid()
    spec = SecretSpec(parent, "parent", SecretType.CHACHA20, 32, Usage(encrypt=True, derive=True))
    if SecretType.CHACHA20 not in token.capabilities.secret_types:
        with pytest.raises(Unsupported) as err:
            token.generate_secret(spec)
        assert err.value.mechanism == "CKM_CHACHA20_KEY_GEN"
        return
    value = os.urandom(32)
    token.import_secret(spec, value)
    child = kid()
    salt, context = (7).to_bytes(4, "big"), b"channel-1"
    token.hkdf_derive(parent, SecretSpec(child, "child", SecretType.CHACHA20, 32), salt=salt, info=context)
    assert_protected(token, child)
    nonce, msg = os.urandom(12), b"secret chat"
    sealed = token.chacha20_poly1305(child, nonce, msg, b"aad")
    software = ChaCha20Poly1305(HKDF(hashes.SHA256(), 32, salt, context).derive(value))
    assert software.decrypt(nonce, sealed, b"aad") == msg
    assert token.chacha20_poly1305(child, nonce, sealed, b"aad", decrypt=True) == msg
    with pytest.raises(InvalidInput):
        token.chacha20_poly1305(child, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad", decrypt=True)
    generated = kid()
    assert token.generate_secret(SecretSpec(generated, "gen", SecretType.CHACHA20, 32)).secret_type is SecretType.CHACHA20
    assert_protected(token, generated)


# -- generation, signatures, lifecycle -----------------------------------------------


@pytest.mark.parametrize("kind,length", [(SecretType.AES, 16), (SecretType.AES, 24), (SecretType.AES, 32), (SecretType.GENERIC, 32), (SecretType.GENERIC, 64)])
def test_generate_secret_keys(token: Token, kind: SecretType, length: int) -> None:
    key = kid()
    usage = Usage(encrypt=True) if kind is SecretType.AES else Usage(sign=True)
    info = token.generate_secret(SecretSpec(key, "gen", kind, length, usage))
    assert (info.secret_type, info.length) == (kind, length)
    assert_protected(token, key)
    if kind is SecretType.AES:
        iv = os.urandom(12)
        assert token.aes_gcm(key, iv, token.aes_gcm(key, iv, b"x"), decrypt=True) == b"x"
    else:
        for alg in (HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512):
            if alg.digest_size <= length:
                assert token.hmac_verify(key, alg, b"m", token.hmac(key, alg, b"m"))


@pytest.mark.parametrize("curve", [Curve.P256, Curve.P384, Curve.P521, Curve.SECP256K1, Curve.ED25519, Curve.ED448], ids=lambda c: c.value)
def test_signatures_verify_in_software(token: Token, curve: Curve) -> None:
    key = kid()
    if curve not in token.capabilities.curves:
        with pytest.raises(Unsupported):
            token.generate_keypair(key, "sig", curve, Usage(sign=True))
        return
    info = token.generate_keypair(key, "sig", curve, Usage(sign=True))
    assert_protected(token, key)
    msg = b"to be signed"
    sig = token.sign(key, msg)
    assert token.verify(key, msg, sig)
    assert not token.verify(key, msg + b"!", sig)
    if curve in SW_EC:
        half = len(sig) // 2
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
        ec.EllipticCurvePublicKey.from_encoded_point(SW_EC[curve], info.public_key).verify(der, msg, ec.ECDSA(hashes.SHA256()))
    else:
        cls = ed25519.Ed25519PublicKey if curve is Curve.ED25519 else ed448.Ed448PublicKey
        cls.from_public_bytes(info.public_key).verify(sig, msg)
        with pytest.raises(InvalidSignature):
            cls.from_public_bytes(info.public_key).verify(sig, msg + b"!")


def test_find_list_relabel_destroy(token: Token) -> None:
    a, b = kid(), kid()
    token.generate_keypair(a, "pair", Curve.P256, Usage(derive=True))
    token.generate_secret(SecretSpec(b, "secret", SecretType.AES, 32))
    listed = {k.kid: k for k in token.list_keys()}
    assert listed[a].key_class is KeyClass.PRIVATE and listed[a].public_key
    assert listed[b].key_class is KeyClass.SECRET
    token.set_label(a, "renamed")
    assert token.get_key(a).label == "renamed"
    assert token.destroy(a) == 2  # both halves of the pair
    assert token.destroy(b) == 1
    assert token.find_key(a) is None and token.find_key(b) is None
    with pytest.raises(NotFound):
        token.ecdh_secret(a, peer=software_peer(Curve.P256)[1]["der"])
    with pytest.raises(NotFound):
        token.set_label(a, "gone")


def test_duplicate_import_refused(token: Token) -> None:
    from gateway.errors import AlreadyExists

    _, forms = software_peer(Curve.P256)
    key = kid()
    token.import_public_key(key, "peer", Curve.P256, forms["compressed"])
    with pytest.raises(AlreadyExists):
        token.import_public_key(key, "peer", Curve.P256, forms["uncompressed"])


def test_data_objects(token: Token) -> None:
    app = f"gateway-test-{os.urandom(4).hex()}"
    if not token.capabilities.data_objects:
        with pytest.raises(Unsupported) as err:
            token.create_data(app, "one", b"1")
        assert err.value.mechanism == "CKO_DATA"
        return
    token.create_data(app, "one", b'{"a": 1}')
    token.create_data(app, "two", b"2")
    assert sorted((d.label, d.value) for d in token.list_data(app)) == [("one", b'{"a": 1}'), ("two", b"2")]
    assert token.destroy_data(app, "one")
    assert [d.label for d in token.list_data(app)] == ["two"]


def test_capability_rows_name_features(token: Token) -> None:
    rows = dict(token.capabilities.rows())
    assert "P-256" in rows["ECDH (CKM_ECDH1_DERIVE)"]
    assert rows["HKDF (CKM_HKDF_DERIVE)"] == ("no" if not token.capabilities.hkdf else rows["HKDF (CKM_HKDF_DERIVE)"])


def test_detected_capabilities_match_the_known_tokens(softhsm_token: Token, nss_token: Token) -> None:
    """Pin detection to the measured facts, so a probe that silently fails cannot
    turn every primitive test above into its 'unsupported' branch."""
    sh, nss = softhsm_token.capabilities, nss_token.capabilities
    assert set(ECDH_CURVES) <= sh.ecdh_curves
    assert {Curve.ED25519, Curve.ED448} <= sh.curves
    assert sh.ecdh_kdfs == {EcdhKdf.NULL} and not sh.hkdf and SecretType.CHACHA20 not in sh.secret_types
    assert {Curve.P256, Curve.P384, Curve.P521, Curve.X25519} <= nss.ecdh_curves
    assert Curve.SECP256K1 not in nss.curves and Curve.X448 not in nss.curves
    assert nss.hkdf and {HashAlg.SHA256, HashAlg.SHA384} <= nss.hkdf_hashes
    assert {EcdhKdf.SHA256, EcdhKdf.SHA384, EcdhKdf.SHA512} <= nss.ecdh_kdfs
    assert SecretType.CHACHA20 in nss.secret_types and nss.chacha20_poly1305 and nss.sp800_108
    assert sh.data_objects and not nss.data_objects


def test_get_data_by_label_is_cached(token: Token) -> None:
    if not token.capabilities.data_objects:
        pytest.skip("this token refuses CKO_DATA token objects")
    app = f"gateway-test-{os.urandom(4).hex()}"
    token.create_data(app, "rec", b"value")
    assert token.get_data(app, "rec").value == b"value"  # type: ignore[union-attr]
    scans = token.counters["find_objects"]
    assert token.get_data(app, "rec").value == b"value"  # type: ignore[union-attr]
    assert token.counters["find_objects"] == scans
    token.destroy_data(app, "rec")
    assert token.get_data(app, "rec") is None
    assert token.get_data(app, "other") is None
