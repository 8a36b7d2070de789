"""What a token can do, detected from C_GetMechanismList and small probes.

The core consults ``Capabilities`` before choosing how to derive; ``require_*``
raise ``Unsupported`` naming the missing mechanism, so a request the token
cannot serve is a clear 4xx and never a token error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Unsupported
from .constants import CKD, CKM, ckm_name
from .curves import KeygenRecipe
from .types import Curve, EcdhKdf, HashAlg, SecretType

HMAC_MECHANISMS = {
    HashAlg.SHA256: CKM.SHA256_HMAC,
    HashAlg.SHA384: CKM.SHA384_HMAC,
    HashAlg.SHA512: CKM.SHA512_HMAC,
    HashAlg.SHA3_256: CKM.SHA3_256_HMAC,
    HashAlg.SHA3_384: CKM.SHA3_384_HMAC,
    HashAlg.SHA3_512: CKM.SHA3_512_HMAC,
}
DIGEST_MECHANISMS = {HashAlg.SHA256: CKM.SHA256, HashAlg.SHA384: CKM.SHA384, HashAlg.SHA512: CKM.SHA512}
ECDH_KDF_VALUES = {
    EcdhKdf.NULL: CKD.NULL,
    EcdhKdf.SHA256: CKD.SHA256_KDF,
    EcdhKdf.SHA384: CKD.SHA384_KDF,
    EcdhKdf.SHA512: CKD.SHA512_KDF,
}
SECRET_KEYGEN = {
    SecretType.AES: CKM.AES_KEY_GEN,
    SecretType.GENERIC: CKM.GENERIC_SECRET_KEY_GEN,
    SecretType.CHACHA20: CKM.CHACHA20_KEY_GEN,
}


@dataclass(frozen=True)
class Capabilities:
    mechanisms: frozenset[int]
    keygen: dict[Curve, KeygenRecipe] = field(default_factory=dict)  # curves we can generate
    ecdh_curves: frozenset[Curve] = frozenset()  # curves whose keys ECDH1_DERIVE accepts
    ecdh_kdfs: frozenset[EcdhKdf] = frozenset()
    hkdf_hashes: frozenset[HashAlg] = frozenset()
    data_objects: bool = False  # CKO_DATA token objects (the gateway's own records)

    @property
    def curves(self) -> frozenset[Curve]:
        return frozenset(self.keygen)

    @property
    def hkdf(self) -> bool:
        return CKM.HKDF_DERIVE in self.mechanisms and bool(self.hkdf_hashes)

    @property
    def sp800_108(self) -> bool:
        return CKM.SP800_108_COUNTER_KDF in self.mechanisms

    @property
    def secret_types(self) -> frozenset[SecretType]:
        return frozenset(t for t, m in SECRET_KEYGEN.items() if m in self.mechanisms)

    @property
    def hmac_hashes(self) -> frozenset[HashAlg]:
        return frozenset(h for h, m in HMAC_MECHANISMS.items() if m in self.mechanisms)

    @property
    def aes_gcm(self) -> bool:
        return CKM.AES_GCM in self.mechanisms

    @property
    def chacha20_poly1305(self) -> bool:
        return CKM.CHACHA20_POLY1305 in self.mechanisms

    @property
    def ecdsa(self) -> bool:
        return CKM.ECDSA in self.mechanisms

    @property
    def eddsa(self) -> bool:
        return CKM.EDDSA in self.mechanisms

    # -- checks the core calls before choosing a recipe ---------------------

    def require_curve(self, curve: Curve) -> KeygenRecipe:
        recipe = self.keygen.get(curve)
        if recipe is None:
            mech = "CKM_EC_EDWARDS_KEY_PAIR_GEN" if curve.family == "edwards" else "CKM_EC_KEY_PAIR_GEN"
            raise Unsupported(f"the token cannot create {curve.value} keys ({mech} for {curve.value})", mech)
        return recipe

    def require_ecdh(self, curve: Curve, kdf: EcdhKdf = EcdhKdf.NULL) -> None:
        if curve not in self.ecdh_curves:
            raise Unsupported(
                f"the token cannot do ECDH on {curve.value} (CKM_ECDH1_DERIVE for {curve.value})",
                "CKM_ECDH1_DERIVE",
            )
        if kdf not in self.ecdh_kdfs:
            name = f"CKD_{kdf.name}_KDF" if kdf is not EcdhKdf.NULL else "CKD_NULL"
            raise Unsupported(f"the token's CKM_ECDH1_DERIVE does not support the {name} KDF", name)

    def require_hkdf(self, hash_alg: HashAlg = HashAlg.SHA256) -> None:
        if CKM.HKDF_DERIVE not in self.mechanisms:
            raise Unsupported("the token has no CKM_HKDF_DERIVE", "CKM_HKDF_DERIVE")
        if hash_alg not in self.hkdf_hashes:
            raise Unsupported(
                f"the token's CKM_HKDF_DERIVE cannot use {hash_alg.value}", ckm_name(DIGEST_MECHANISMS[hash_alg])
            )

    def require_secret(self, kind: SecretType) -> None:
        if kind not in self.secret_types:
            mech = SECRET_KEYGEN[kind]
            raise Unsupported(f"the token cannot hold {kind.value} keys ({ckm_name(mech)})", ckm_name(mech))

    def require_mechanism(self, mechanism: int, what: str) -> None:
        if mechanism not in self.mechanisms:
            raise Unsupported(f"the token cannot {what} ({ckm_name(mechanism)})", ckm_name(mechanism))

    def require_hmac(self, hash_alg: HashAlg) -> None:
        self.require_mechanism(HMAC_MECHANISMS[hash_alg], f"compute HMAC-{hash_alg.value}")

    def rows(self) -> list[tuple[str, str]]:
        """(feature, value) rows for `gateway capabilities`."""

        def names(items: frozenset[object]) -> str:
            return ", ".join(sorted(getattr(i, "value", str(i)) for i in items)) or "-"

        return [
            ("curves (key generation)", names(self.curves)),  # type: ignore[arg-type]
            ("ECDH (CKM_ECDH1_DERIVE)", names(self.ecdh_curves)),  # type: ignore[arg-type]
            ("ECDH KDFs", names(self.ecdh_kdfs)),  # type: ignore[arg-type]
            ("HKDF (CKM_HKDF_DERIVE)", names(self.hkdf_hashes) if self.hkdf else "no"),  # type: ignore[arg-type]
            ("SP800-108 counter KDF", "yes" if self.sp800_108 else "no"),
            ("secret key types", names(self.secret_types)),  # type: ignore[arg-type]
            ("HMAC", names(self.hmac_hashes)),  # type: ignore[arg-type]
            ("AES-GCM", "yes" if self.aes_gcm else "no"),
            ("ChaCha20-Poly1305", "yes" if self.chacha20_poly1305 else "no"),
            ("ECDSA", "yes" if self.ecdsa else "no"),
            ("EdDSA", "yes" if self.eddsa else "no"),
            ("data objects", "yes" if self.data_objects else "no"),
            ("mechanisms", str(len(self.mechanisms))),
        ]
