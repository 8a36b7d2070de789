"""Fuzzing both dialects with schemathesis against /openapi.json, on a real `gateway serve`
with valid credentials: no answer is a 5xx, and every answer matches the document (status
code, content type, body schema, headers).

Requests are generated from the document (Hypothesis strategies per operation).  Before each
call, half of the kids and ids in a request are swapped for ones that exist (keys of every
HEM type, a vault with keys), so the calls get past "not found" into the code that uses
them.  HEM calls carry a token of the stress issuer with every HEM scope, including use of
those keys; Vault calls a JWT of the vault's owner.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import requests
import schemathesis
from schemathesis.core.result import Ok
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.docs import openapi_document
from tests.service_support import ServiceSetup, running
from tests.stress import report
from tests.stress.support import Issuer, stress_config

PER_DIALECT = report.size(1100, 120)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
HEM_PREFIXES = ("/api/auth", "/api/keymgmt", "/api/crypto", "/api/logger", "/api/system")
VAULT_PREFIX = "/api/v1/vaults"
HEM_SCOPES = "keymgmt:gen keymgmt:imp keymgmt:list keymgmt:search keymgmt:get keymgmt:upd keymgmt:del keymgmt:derive logger:get"


def _session(setup: ServiceSetup) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the test CA
    session.verify = str(setup.ca)
    return session


def _seed(setup: ServiceSetup, issuer: Issuer, http: requests.Session) -> tuple[list[str], dict[str, list[str]]]:
    """HEM keys of several types, and a vault with keys: what the fuzzer may name."""
    base = f"https://127.0.0.1:{setup.port}"
    hem = {"Authorization": f"Bearer {issuer.hem(HEM_SCOPES)}"}
    kids = []
    for key_type, mode in (("AES256", None), ("SHA2-256", None), ("SECP256R1", "ECDH,ExDSA"), ("ED25519", None),
                           ("CURVE25519", None)):
        body = {"label": f"fuzz-{key_type}", "type": key_type, **({"mode": mode} if mode else {})}
        answer = http.post(f"{base}/api/keymgmt/create", json=body, headers=hem, timeout=60)
        assert answer.status_code == 200, answer.text
        kids.append(answer.json()["kid"])
    vault_auth = {"Authorization": f"Bearer {issuer.vault('application:6c1c5d68-1b4b-4b49-9c49-1d2f8b7f6a01')}"}
    vault = http.post(f"{base}{VAULT_PREFIX}", json={"name": "fuzz", "description": "fuzz"}, headers=vault_auth,
                      timeout=60).json()
    keys = []
    for spec, usage, key_type in (("AES-256-GCM", "encrypt/decrypt", "symmetric"), ("Ed25519", "sign/verify", "asymmetric"),
                                  ("secp256k1", "sign/verify", "asymmetric")):
        answer = http.post(f"{base}{VAULT_PREFIX}/{vault['id']}/keys", headers=vault_auth, timeout=60,
                           json={"type": key_type, "usage": usage, "spec": spec, "name": spec, "description": "d"})
        assert answer.status_code == 201, answer.text
        keys.append(answer.json()["id"])
    return kids, {"id": [vault["id"]], "key_id": keys}


def _fuzz(dialect: str, operations: list[Any], setup: ServiceSetup, headers: dict[str, str],
          swap: Any, http: requests.Session) -> tuple[Counter[str], list[str]]:
    base = f"https://127.0.0.1:{setup.port}"
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    per_operation = max(1, PER_DIALECT // len(operations))
    rng = random.Random(6)
    rounds = 0
    # Operations without parameters yield a single example per round: go round until the dialect has its count.
    while sum(statuses.values()) < PER_DIALECT:
        rounds += 1
        for operation in operations:

            @seed(rounds)
            @settings(max_examples=per_operation, deadline=None, phases=[Phase.generate], database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case: Any) -> None:
                swap(case, rng)
                response = case.call(base_url=base, session=http, headers=headers, timeout=60, verify=str(setup.ca))
                statuses[str(response.status_code)] += 1
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{str(exc).strip().splitlines()[0][:300]}")

            run()
    return statuses, failures


def test_fuzz_both_dialects(tmp_path: Path) -> None:
    issuer = Issuer()
    setup = stress_config(tmp_path / "fuzz", issuer=issuer)
    schema = schemathesis.openapi.from_dict(openapi_document())
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert operations
    hem_ops = [op for op in operations if op.path.startswith(HEM_PREFIXES)]
    vault_ops = [op for op in operations if op.path.startswith(VAULT_PREFIX)]
    with running(setup, "--workers", "2"):
        http = _session(setup)
        kids, ids = _seed(setup, issuer, http)
        hem_headers = {"Authorization": "Bearer " + issuer.hem(HEM_SCOPES + " " + " ".join(f"keymgmt:use:{k}" for k in kids))}
        vault_headers = {"Authorization": f"Bearer {issuer.vault('application:6c1c5d68-1b4b-4b49-9c49-1d2f8b7f6a01')}"}

        def swap_hem(case: Any, rng: random.Random) -> None:
            if case.path_parameters and "kid" in case.path_parameters and rng.random() < 0.5:
                case.path_parameters["kid"] = rng.choice(kids)
            if isinstance(case.body, dict):
                for name in ("kid", "ext_kid"):
                    if name in case.body and rng.random() < 0.5:
                        case.body[name] = rng.choice(kids)

        def swap_vault(case: Any, rng: random.Random) -> None:
            for name, values in ids.items():
                if case.path_parameters and name in case.path_parameters and rng.random() < 0.6:
                    case.path_parameters[name] = rng.choice(values)

        hem = _fuzz("hem", hem_ops, setup, hem_headers, swap_hem, http)
        vault = _fuzz("vault", vault_ops, setup, vault_headers, swap_vault, http)
    section = report.section("fuzzing (schemathesis, generated from /openapi.json, valid credentials)")
    for name, (statuses, failures), ops in (("HEM", hem, hem_ops), ("Vault", vault, vault_ops)):
        section.add(f"{name}: {sum(statuses.values())} requests over {len(ops)} operations; by status "
                    f"{dict(sorted(statuses.items()))}; 5xx = {sum(n for s, n in statuses.items() if s.startswith('5'))}; "
                    f"answers not matching the document = {len(failures)}")
    problems = hem[1] + vault[1]
    assert problems == [], "\n".join(problems[:20])
    assert sum(hem[0].values()) >= PER_DIALECT and sum(vault[0].values()) >= PER_DIALECT
