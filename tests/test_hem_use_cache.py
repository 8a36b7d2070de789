"""Keys used through HEM are remembered per process (HemKeys.load_for_use), and that never
makes a deleted key usable: the token call decides, wherever the key was deleted."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.token import Token
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    Session,
    client,
    hem_settings,
    hem_tokens,
    service_of,
    tls,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _ecdh_key(session: Session) -> tuple[str, ec.EllipticCurvePrivateKey, str, bytes]:
    """A stored P-256 ECDH key, a software peer, the peer's public key (base64) and the expected Z."""
    kid = await session.create("SECP256R1", mode="ECDH")
    public = base64.b64decode((await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get"))["pubkey"])
    peer = ec.generate_private_key(ec.SECP256R1())
    z = peer.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public))
    peer_b64 = b64(peer.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.CompressedPoint))
    return kid, peer, peer_b64, z


async def test_a_used_key_keeps_working_after_an_update(client: Any) -> None:
    session = Session(client)
    kid, _, peer, z = await _ecdh_key(session)
    scope = f"keymgmt:use:{kid}"
    assert base64.b64decode((await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer}))["ecdh"]) == z
    assert bytes.fromhex(kid) in service_of(client).keys._for_use
    await session.post("/api/keymgmt/update", "keymgmt:upd", {"kid": kid, "label": "renamed"})
    assert (await session.get(f"/api/keymgmt/get/{kid}", "keymgmt:get"))["label"] == "renamed"
    assert base64.b64decode((await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer}))["ecdh"]) == z


async def test_a_key_deleted_through_the_api_is_unusable(client: Any) -> None:
    session = Session(client)
    kid, _, peer, _ = await _ecdh_key(session)
    scope = f"keymgmt:use:{kid}"
    await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer})
    await session.post("/api/keymgmt/derive", "keymgmt:gen", {"kid": kid, "label": "d", "type": "AES256",
                                                                "pubkey": peer})
    response = await client.delete(f"/api/keymgmt/delete/{kid}", headers=await session.headers("keymgmt:del"))
    assert response.status == 200, await response.text()
    assert bytes.fromhex(kid) not in service_of(client).keys._for_use
    await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer}, status=406)
    await session.post("/api/keymgmt/derive", "keymgmt:gen", {"kid": kid, "label": "d", "type": "AES256",
                                                                "pubkey": peer}, status=406)


async def test_a_key_deleted_elsewhere_is_unusable(client: Any, hem_settings: Any) -> None:
    """Deleted by "another process": a second adapter Token on the same token (its own sessions and
    handle cache), so the gateway's cached facts and cached handle both go stale."""
    session = Session(client)
    kid, _, peer, _ = await _ecdh_key(session)
    scope = f"keymgmt:use:{kid}"
    await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer})
    other = Token(hem_settings)
    try:
        assert other.destroy(bytes.fromhex(kid)) == 2  # both halves of the pair
    finally:
        other.close()
    assert bytes.fromhex(kid) in service_of(client).keys._for_use  # still remembered here ...
    await session.post("/api/crypto/ecdh", scope, {"kid": kid, "pubkey": peer}, status=406)  # ... but refused
    await session.post("/api/keymgmt/derive", "keymgmt:gen", {"kid": kid, "label": "d", "type": "AES256",
                                                                "pubkey": peer}, status=406)
