"""Two `gateway serve` processes on one SoftHSM2 token (and one state directory), creating,
deriving and deleting concurrently, each often on keys the other made.

Afterwards: every key whose create or derive answered 200 and that was not deleted is in
the token with its metadata and works through either instance (checked in software); every
key whose delete answered 200 is gone; the token holds no key nobody was told about
(orphans), no key without metadata and no half pair; both instances list exactly what the
token holds.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tests.service_support import running
from tests.stress import report
from tests.stress.support import Api, Issuer, TokenCheck, listed_kids, second_instance, stress_config, usable_aes

OPERATIONS = report.size(1000, 120)  # per instance
CONCURRENCY = report.size(16, 6)  # per instance


@dataclass
class Registry:
    """What the API said, shared by both instances' clients (one event loop: no locks needed)."""

    peer: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    bases: dict[str, bytes] = field(default_factory=dict)  # kid -> Z with the peer
    derived: dict[str, str] = field(default_factory=dict)  # kid -> base kid
    deleted: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def peer_b64(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return base64.b64encode(self.peer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)).decode()


async def _client(name: str, api: Api, bearer: str, reg: Registry, rng: random.Random, operations: int) -> None:
    for _ in range(operations):
        roll = rng.random()
        if roll < 0.15 or not reg.bases:
            status, answer = await api.call("POST", "/api/keymgmt/create",
                                            {"label": f"base-{name}", "type": "SECP256R1", "mode": "ECDH"}, bearer)
            reg.counts[f"create {status}"] += 1
            if status == 200:
                kid = answer["kid"]
                status, info = await api.call("GET", f"/api/keymgmt/get/{kid}", bearer=bearer)
                assert status == 200, info  # just created: visible at once
                public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), base64.b64decode(info["pubkey"]))
                reg.bases[kid] = reg.peer.exchange(ec.ECDH(), public)
        elif roll < 0.75:
            base = rng.choice(sorted(reg.bases))
            status, answer = await api.call("POST", "/api/keymgmt/derive",
                                            {"kid": base, "label": f"derived-{name}", "type": "AES256",
                                             "pubkey": reg.peer_b64}, bearer)
            reg.counts[f"derive {status}"] += 1
            if status == 200:
                reg.derived[answer["kid"]] = base
            else:
                assert status == 406 and base in reg.deleted, (status, answer)  # only a base deleted meanwhile
        elif roll < 0.95 and reg.derived:
            kid = rng.choice(sorted(reg.derived))
            reg.derived.pop(kid)
            status, answer = await api.call("DELETE", f"/api/keymgmt/delete/{kid}", bearer=bearer)
            reg.counts[f"delete derived {status}"] += 1
            assert status == 200, (status, answer)
            reg.deleted.add(kid)
        elif len(reg.bases) > 2:
            kid = rng.choice(sorted(reg.bases))
            reg.bases.pop(kid)
            reg.deleted.add(kid)  # from now on the other instance may be refused (406)
            status, answer = await api.call("DELETE", f"/api/keymgmt/delete/{kid}", bearer=bearer)
            reg.counts[f"delete base {status}"] += 1
            assert status == 200, (status, answer)


async def _ecdh_ok(api: Api, issuer: Issuer, kid: str, reg: Registry) -> bool:
    status, answer = await api.call("POST", "/api/crypto/ecdh", {"kid": kid, "pubkey": reg.peer_b64},
                                    issuer.hem(f"keymgmt:use:{kid}"))
    return status == 200 and base64.b64decode(answer["ecdh"]) == reg.bases[kid]


async def test_two_instances_create_derive_delete(tmp_path: Path) -> None:
    issuer = Issuer()
    setup_a = stress_config(tmp_path / "two", issuer=issuer)
    setup_b = second_instance(setup_a, "b")
    reg = Registry()
    section = report.section(f"two instances on one token: 2 x {OPERATIONS} operations (create 15%, derive 60%, "
                             f"delete 25%) at concurrency {CONCURRENCY} each")
    with running(setup_a) as one, running(setup_b) as two:
        apis = [Api(setup_a), Api(setup_b)]
        try:
            mgmt = issuer.hem("keymgmt:gen keymgmt:get keymgmt:list keymgmt:del")
            rng = random.Random(6)
            per_client = max(1, OPERATIONS // CONCURRENCY)
            await asyncio.gather(*(
                _client(f"{'ab'[i % 2]}{i}", apis[i % 2], mgmt, reg, random.Random(rng.random()), per_client)
                for i in range(2 * CONCURRENCY)))
            # Use every surviving key through the instance that did NOT make it, as far as we know (either works).
            unusable = []
            for n, (kid, base) in enumerate(sorted(reg.derived.items())):
                if not await usable_aes(apis[n % 2], issuer, kid, reg.bases[base] if base in reg.bases else b""):
                    if base in reg.bases:
                        unusable.append(kid)
            for n, kid in enumerate(sorted(reg.bases)):
                if not await _ecdh_ok(apis[n % 2], issuer, kid, reg):
                    unusable.append(kid)
            deleted_usable = [kid for kid in sorted(reg.deleted)[:50]
                              if (await apis[0].call("GET", f"/api/keymgmt/get/{kid}", bearer=mgmt))[0] != 406]
            listed = [await listed_kids(api, mgmt, pages=report.size(40, 1000)) for api in apis]
        finally:
            for api in apis:
                await api.close()
        acknowledged = {**{k: "AES256" for k in reg.derived}, **{k: "SECP256R1" for k in reg.bases}}
        check = TokenCheck.run(setup_a, acknowledged, unusable)
        # A derived key whose base was deleted stays (a derived key does not need its base).
        unexpected = sorted(set(check.hem) - set(acknowledged))
        gone_but_present = sorted(reg.deleted & set(check.hem))
        for server in (one, two):
            assert server.proc.poll() is None
    section.add(f"requests by outcome: {dict(sorted(reg.counts.items()))}")
    section.add(f"after: {len(reg.bases)} base keys and {len(reg.derived)} derived keys alive, {len(reg.deleted)} "
                f"deleted; token: {len(check.hem)} keys with metadata; lost = {len(check.lost)}, orphans = "
                f"{len(check.orphans) + len(unexpected)} (unknown keys {len(unexpected)}, keys without metadata or half "
                f"pairs {len(check.orphans)}), deleted but present = {len(gone_but_present)}, incomplete objects (no CKA_ID, "
                f"label or value; SoftHSM2 failure leftovers) = {len(check.incomplete)}; not sensitive or extractable = {len(check.unprotected)}; both instances "
                f"count what the token holds: {listed[0][0] == listed[1][0] == len(check.hem)}")
    assert check.lost == [], [(kid, "unusable" if kid in unusable else "in token" if kid in check.hem else "not in token")
                              for kid in check.lost[:10]]
    assert check.orphans == [] and unexpected == [], (check.orphans, unexpected)
    # SoftHSM2's failure path can leave the start of an object it did not finish (see test_faults.py); the
    # adapter retried the call, so the caller got its key; what stays has no CKA_ID, label or value.
    assert check.incomplete_hold_nothing, check.incomplete
    assert gone_but_present == [] and deleted_usable == [], (gone_but_present, deleted_usable)
    assert check.unprotected == [], check.unprotected[:10]
    assert listed[0][0] == listed[1][0] == len(check.hem)
    assert listed[0][1] <= set(check.hem) and listed[1][1] <= set(check.hem)  # no listed key missing from the token
