"""The calls HEM clients make before anything else, and the HEM counters in /metrics."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.hem_helpers import (  # noqa: F401  (fixtures)
    OTHER_PASSPHRASE,
    client,
    ejwt,
    hem_settings,
    hem_tokens,
    ok,
    tls,
)


async def test_version_and_status(client: Any) -> None:
    version = await ok(await client.get("/api/system/version"))
    assert {"hwv", "fwv", "fwk", "fws"} <= set(version) and "pkcs11-gateway" in version["fwv"]
    status = await ok(await client.get("/api/system/status"))
    # ts present: clients never run the vendor check-in; inited absent: initialised
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["ts"]) and abs(status["time"] - time.time()) < 120
    assert "inited" not in status and status["fls_state"] == 0 and status["https"] is True


def counter(text: str, name: str) -> float:
    match = re.search(rf'^{name}_total{{dialect="hem"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_failed_logins_and_refused_tokens_are_counted(client: Any) -> None:
    before = counter(await (await client.get("/metrics")).text(), "gateway_auth_failures")
    challenge = await ok(await client.get("/api/auth/token"))
    await ok(await client.post("/api/auth/token", json={"auth": ejwt(challenge, OTHER_PASSPHRASE, "x")}), 401)
    await ok(await client.get("/api/keymgmt/list"), 401)
    after = counter(await (await client.get("/metrics")).text(), "gateway_auth_failures")
    assert after - before == 2
