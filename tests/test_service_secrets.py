"""No secret value reaches the logs, the metrics or the audit trail.

A real `gateway serve` (two workers, JSON logs) on a fresh SoftHSM2 token and a fresh NSS
database runs both dialects end to end: the HEM login handshake with a passphrase,
create, derive, encrypt and the ECDH call that hands out a shared secret; a Vault JWT,
a ChaCha20 parent imported with a known value, derive and encrypt.  The derived keys
are checked in software (so the values scanned for are the real ones), then every
byte the service wrote (its log, /metrics on both listeners, the audit segments, its
stdout) is searched for every secret of the run in every usual encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.provision import ensure_nss_db
from tests.hem_helpers import EID, ejwt, login_key, login_public
from tests.service_support import PIN, SO_PIN, ServiceSetup, make_setup, request, running
from tests.tokens import NSS_INIT_ARGS, NSS_LABEL, NSS_MODULE
from tests.vault_support import Issuer

PASSPHRASE = "svc passphrase 6d0f2b8e only in this test"
NSS_PIN = "svc-nss-pin-93be71c2d4"
NSS_PIN_ENV = "GATEWAY_TEST_SERVICE_NSS_PIN"


def forms(value: str | bytes) -> set[str]:
    """The ways a secret could be written down: itself, hex, base64, base64url."""
    if isinstance(value, str):
        return {value}
    return {value.hex(), value.hex().upper(), base64.b64encode(value).decode(),
            base64.urlsafe_b64encode(value).decode().rstrip("=")}


def call(setup: ServiceSetup, method: str, path: str, body: Any = None, token: str | None = None,
         expect: int = 200) -> tuple[Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, answer_headers, raw = request(setup, method, path, body=body, headers=headers)
    assert status == expect, (method, path, status, raw[:300])
    return (json.loads(raw) if raw else None), answer_headers


def hem_login(setup: ServiceSetup, scope: str, secrets: list[str | bytes]) -> str:
    challenge, _ = call(setup, "GET", "/api/auth/token")
    auth = ejwt(challenge, PASSPHRASE, scope)
    answer, _ = call(setup, "POST", "/api/auth/token", {"auth": auth})
    secrets += [auth, answer["token"]]
    return str(answer["token"])


def test_no_secret_in_logs_metrics_or_audit(tmp_path: Path) -> None:
    nss_dir = tmp_path / "nss"
    ensure_nss_db(nss_dir, NSS_PIN)
    issuer = Issuer.new("svc-issuer")
    extra = f"""
[[tokens]]
name = "nss"
module = "{NSS_MODULE}"
label = "{NSS_LABEL}"
pin_env = "{NSS_PIN_ENV}"
init_args = "{NSS_INIT_ARGS.replace('{directory}', str(nss_dir))}"

[hem]
eid = "{EID}"
failed_login_delay_ms = 0
[[hem.users]]
name = "alice"
pubkey = "{base64.b64encode(login_public(PASSPHRASE)).decode()}"

[vault]
allow_secret_import = true
[[vault.issuers]]
name = "{issuer.name}"
keys = "{issuer.write_public(tmp_path)}"
"""
    setup = make_setup(tmp_path / "svc", extra=extra)
    setup.env[NSS_PIN_ENV] = NSS_PIN
    issuer_pem = issuer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    issuer_der = issuer.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    secrets: list[str | bytes] = [PIN, SO_PIN, NSS_PIN, PASSPHRASE, login_key(PASSPHRASE, EID), issuer_der,
                                  issuer_pem.decode().splitlines()[1],  # the first line of the PEM body
                                  issuer.key.private_numbers().private_value.to_bytes(32, "big")]
    request_ids: list[str] = []

    with running(setup, "--workers", "2") as server:
        # ---------------------------------------------------------------- HEM
        bearer = hem_login(setup, "keymgmt:gen", secrets)
        created, _ = call(setup, "POST", "/api/keymgmt/create", {"label": "base", "type": "SECP256R1", "mode": "ECDH"},
                          bearer)
        base_kid = created["kid"]
        base_public = base64.b64decode(call(setup, "GET", f"/api/keymgmt/get/{base_kid}", token=bearer)[0]["pubkey"])
        peer = ec.generate_private_key(ec.SECP256R1())
        peer_public = peer.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.CompressedPoint)
        shared = peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), base_public))
        derived, headers = call(setup, "POST", "/api/keymgmt/derive",
                                {"kid": base_kid, "label": "derived", "type": "AES256",
                                 "pubkey": base64.b64encode(peer_public).decode()}, bearer)
        request_ids.append(headers["x-request-id"])
        derived_kid = derived["kid"]
        recipe = call(setup, "GET", f"/api/keymgmt/get/{derived_kid}", token=bearer)[0]["recipe"]
        assert recipe == "raw"  # SoftHSM2 has no HKDF: the AES key is the shared secret itself
        use = hem_login(setup, f"keymgmt:use:{derived_kid}", secrets)
        sealed, _ = call(setup, "POST", "/api/crypto/cipher/encrypt",
                         {"kid": derived_kid, "alg": "AES256-GCM", "msg": base64.b64encode(b"hem secret scan").decode()},
                         use)
        unsealed = AESGCM(shared).decrypt(base64.b64decode(sealed["iv"]),
                                          base64.b64decode(sealed["ciphertext"]) + base64.b64decode(sealed["tag"]), None)
        assert unsealed == b"hem secret scan"  # the derived key really is `shared`
        use_base = hem_login(setup, f"keymgmt:use:{base_kid}", secrets)
        ecdh, _ = call(setup, "POST", "/api/crypto/ecdh",
                       {"kid": base_kid, "pubkey": base64.b64encode(peer_public).decode()}, use_base)
        assert base64.b64decode(ecdh["ecdh"]) == shared
        call(setup, "POST", "/api/keymgmt/create", {"label": "x", "type": "AES256"}, "not.a.token", expect=401)
        secrets += [shared, bearer, use, use_base]

        # ---------------------------------------------------------------- Vault
        vault_jwt = issuer.token(f"application:{uuid.uuid4()}")
        secrets.append(vault_jwt)
        vault, _ = call(setup, "POST", "/api/v1/vaults", {"name": "scan", "description": "secret scan"}, vault_jwt,
                        expect=201)
        parent_secret = os.urandom(32)
        parent, _ = call(setup, "POST", f"/api/v1/vaults/{vault['id']}/keys",
                         {"type": "symmetric", "usage": "encrypt/decrypt", "spec": "ChaCha20", "name": "parent",
                          "secret": parent_secret.hex()}, vault_jwt, expect=201)
        context = "channel-secret-scan"
        child, headers = call(setup, "POST", f"/api/v1/vaults/{vault['id']}/keys/{parent['id']}/derive",
                              {"nonce": 7, "context": context, "name": "child", "description": "d"}, vault_jwt,
                              expect=201)
        request_ids.append(headers["x-request-id"])
        child_key = HKDF(hashes.SHA256(), 32, (7).to_bytes(4, "big"), context.encode()).derive(parent_secret)
        blob, _ = call(setup, "POST", f"/api/v1/vaults/{vault['id']}/keys/{child['id']}/encrypt",
                       {"data": "vault secret scan"}, vault_jwt)
        raw_blob = binascii.unhexlify(blob["data"])
        assert ChaCha20Poly1305(child_key).decrypt(raw_blob[:12], raw_blob[12:], None) == b"vault secret scan"
        secrets += [parent_secret, child_key]

        _, _, tls_metrics = request(setup, "GET", "/metrics")
        _, _, plain_metrics = request(setup, "GET", "/metrics", plain=True)
        assert server.stop() == 0

    audit_dir = setup.directory / "state" / "audit"
    audit = "".join(p.read_text() for p in sorted(audit_dir.glob("*.log")))
    log = server.log_text()
    written = {"log": log, "metrics": tls_metrics.decode() + plain_metrics.decode(), "audit": audit,
               "stdout": "".join(server.stdout)}

    # What was scanned is the real output of this run ...
    assert request_ids[0] in audit and all(rid in log for rid in request_ids)
    assert '"route": "/api/keymgmt/derive"' in log and '"route": "/api/v1/vaults/{id}/keys/{key_id}/derive"' in log
    assert "gateway_http_requests_total" in written["metrics"]
    # ... and no secret is in any of it.
    leaks = [(where, value if isinstance(value, str) else value.hex())
             for value in secrets for form in forms(value) for where, text in written.items() if form in text]
    assert leaks == []
