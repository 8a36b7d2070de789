"""The audit trail of HEM calls: what is recorded, reading it over the API, and `gateway audit verify`."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.cli import main
from tests.hem_helpers import (  # noqa: F401  (fixtures)
    MASTER_PASSPHRASE,
    PASSPHRASE,
    Session,
    bearer,
    client,
    hem_settings,
    hem_tokens,
    ok,
    tls,
)


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.log")):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


async def busy_run(client: Any) -> tuple[Session, list[str]]:
    """A little of everything: success, 400, 401, 403, 406."""
    session = Session(client)
    base = await session.create("CURVE25519", "audited")
    peer = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = {"kid": base, "label": "d", "type": "AES256", "pubkey": base64.b64encode(peer).decode()}
    derived = (await session.post("/api/keymgmt/derive", "keymgmt:gen", body))["kid"]
    await session.post("/api/keymgmt/derive", "keymgmt:gen", {**body, "type": "AES999"}, status=400)
    await session.post("/api/keymgmt/derive", "keymgmt:list", body, status=403)
    await session.post("/api/keymgmt/derive", "keymgmt:gen", {**body, "kid": "ab" * 16}, status=406)
    await ok(await client.post("/api/keymgmt/derive", json=body), 401)
    return session, [base, derived]


async def test_every_call_is_recorded_without_secrets(client: Any, tmp_path: Path) -> None:
    session, (base, derived) = await busy_run(client)
    logged = records(tmp_path / "state" / "audit")
    shapes = [(r["event"], r["code"], r["result_name"], r["status"]) for r in logged]
    assert ("AUTH_SUCCESS_INTERNAL", 13, "OK", 200) in shapes
    assert ("KEY_GENERATION", 20, "OK", 200) in shapes
    # the derive page's log table: 200 OK, 400/406 ERROR, 403 FAILED_SCOPE_CHECK FAILED
    calls = [s for s in shapes if s[0] != "AUTH_SUCCESS_INTERNAL"]  # logins interleave
    assert calls[-5:] == [("KEY_DERIVE", 26, "OK", 200), ("KEY_DERIVE", 26, "ERROR", 400),
                           ("FAILED_SCOPE_CHECK", 12, "FAILED", 403), ("KEY_DERIVE", 26, "ERROR", 406),
                           ("AUTH_FAILED", None, "FAILED", 401)]
    ok_derive = [r for r in logged if r["event"] == "KEY_DERIVE"][0]
    assert ok_derive["subject"] == "U:alice" and ok_derive["kids"] == [base, derived] and ok_derive["request_id"]
    assert logged[-1]["subject"] == "-"
    text = "\n".join(p.read_text() for p in (tmp_path / "state" / "audit").glob("*.log"))
    for secret in [PASSPHRASE, *session.tokens.values()]:
        assert secret not in text
    assert all(len(r["hash"]) == 64 for r in logged) and len(logged[-1]["mac"]) == 64


async def test_log_read_over_the_api_with_logger_scope(client: Any) -> None:
    await busy_run(client)
    session = Session(client)
    listing = await session.get("/api/logger/list", "logger:get")
    assert listing["total"] == len(listing["id"]) >= 1
    assert (await session.get("/api/logger/list/1", "logger:get"))["id"] == listing["id"][1:]
    text = await session.get(f"/api/logger/{listing['id'][0]}", "logger:get")
    assert "KEY_DERIVE" in text and all(json.loads(line)["hash"] for line in text.splitlines())
    await session.get("/api/logger/list", "keymgmt:gen", status=403)
    await session.get("/api/logger/ffffffff", "logger:get", status=406)
    # the master role may read the log (it is denied on keys only)
    await Session(client, MASTER_PASSPHRASE).get("/api/logger/list", "logger:get")


async def test_gateway_audit_verify_passes_then_names_an_altered_record(client: Any, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    await busy_run(client)
    config = str(tmp_path / "gateway.toml")
    assert main(["audit", "verify", "--config", config]) == 0
    assert "ok," in capsys.readouterr().out
    directory = tmp_path / "state" / "audit"
    path = sorted(directory.glob("*.log"))[0]
    raw = path.read_bytes().splitlines(keepends=True)
    victim = json.loads(raw[3])
    victim["status"] = 200 if victim["status"] != 200 else 201
    raw[3] = json.dumps(victim, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(raw))
    assert main(["audit", "verify", "--config", config]) == 1
    err = capsys.readouterr().err
    assert f"segment {path.stem} line 4 (seq {victim['seq']})" in err and "does not match" in err
