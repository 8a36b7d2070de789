"""The OpenAPI document (gateway/http/openapi.json) is valid OpenAPI 3.1, names every route
the app serves (both dialects with every optional part switched on) and nothing it does not
serve; the traffic check of tests/openapi_traffic.py catches what it should."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import load_config
from gateway.http.app import create_app
from gateway.http.docs import OPENAPI_PATH, openapi_document
from tests import openapi_traffic
from tests.openapi_traffic import UNDOCUMENTED_PREFIXES, Exchange, check_exchange
from tests.tokens import SOFTHSM_MODULE

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


class _NoTokens(list[Any]):
    """An empty token set: routes are registered without opening any token."""

    names: list[str] = []


def served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route of an app with both dialects configured."""
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""\
        state_dir = "{tmp_path / 'state'}"
        [server]
        plain_listen = "127.0.0.1:9091"
        [[tokens]]
        name = "t"
        module = "{SOFTHSM_MODULE}"
        label = "service"
        pin = "1234"
        [hem]
        eid = "c2VydmljZSB0ZXN0"
        [vault]
        """))
    app = create_app(load_config(path), _NoTokens())  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD to every GET
            continue
        routes.add((route.method, route.resource.canonical))  # type: ignore[union-attr]
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in openapi_document()["paths"].items()
            for method in item if method in ("get", "post", "put", "delete", "patch")}


def test_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_served_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    served = served_routes(tmp_path)
    api = {(m, p) for m, p in served if not p.startswith(UNDOCUMENTED_PREFIXES)}
    documented = documented_routes()
    assert api - documented == set(), "routes missing from gateway/http/openapi.json"
    assert documented - api == set(), "documented routes the app does not serve"
    # both dialects and the service routes are really there
    assert ("POST", "/api/keymgmt/derive") in api
    assert ("POST", "/api/v1/vaults/{id}/keys/{key_id}/derive") in api
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
            ("GET", "/docs")} <= api


def test_every_operation_is_described() -> None:
    """What the docs page shows: a summary, a description, responses, and unique operation ids."""
    ids = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary") and operation.get("description"), f"{method} {path}"
            assert operation.get("responses"), f"{method} {path}"
            ids.append(operation["operationId"])
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- the traffic check


def _exchange(method: str, path: str, status: int, body: Any = None, request_json: Any = None,
              content_type: str = "application/json", query: dict[str, str] | None = None) -> Exchange:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return Exchange(test="t", method=method, path=path, query=query or {}, request_json=request_json,
                    request_has_body=request_json is not None, status=status, content_type=content_type, body=raw)


def test_traffic_check_accepts_documented_exchanges() -> None:
    assert check_exchange(_exchange("GET", "/healthz", 200, {"status": "ok", "pid": 1})) == []
    assert check_exchange(_exchange("GET", "/nowhere", 404, {"message": "no such route"})) == []
    assert check_exchange(_exchange("POST", "/api/keymgmt/derive", 200, {"kid": "ab" * 16},
                                    {"kid": "cd" * 16, "label": "x", "type": "AES256", "ext_kid": "ef" * 16})) == []
    # a refused request is not held to the request schema
    assert check_exchange(_exchange("POST", "/api/keymgmt/derive", 400, {"message": "kid is missing"}, {})) == []


@pytest.mark.parametrize(
    ("exchange", "problem"),
    [
        (_exchange("GET", "/undocumented", 200, {}), "is not in the document"),
        (_exchange("GET", "/healthz", 418, {"message": "x"}), "status 418 is not documented"),
        (_exchange("GET", "/healthz", 200, {"status": "ok"}), "'pid' is a required property"),
        (_exchange("GET", "/nowhere", 404, b"404: Not Found", content_type="text/plain"), "not JSON"),
        (_exchange("POST", "/api/keymgmt/derive", 200, {"kid": "ab" * 16}, {"kid": "cd" * 16, "type": "AES256"}),
         "'label' is a required property"),
        (_exchange("GET", "/api/v1/vaults", 200, [], query={"page": "1", "colour": "red"}),
         "undocumented query parameters ['colour']"),
        (_exchange("POST", "/api/keymgmt/update", 200, {"unexpected": True}, {"kid": "ab" * 16, "label": "x"}),
         "documented without a body"),
    ],
)
def test_traffic_check_finds_mismatches(exchange: Exchange, problem: str) -> None:
    problems = check_exchange(exchange)
    assert any(problem in p for p in problems), problems


async def test_test_client_requests_are_recorded(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """The plugin really sees the suite's requests (and the test can still read the body)."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'[[tokens]]\nname = "t"\nmodule = "{SOFTHSM_MODULE}"\nlabel = "service"\npin = "1234"\n')
    client = await aiohttp_client(create_app(load_config(path), _NoTokens()))  # type: ignore[arg-type]
    before = len(openapi_traffic.RECORDER.exchanges)
    response = await client.get("/healthz?probe=1", headers={"X-Request-Id": "recorded-0001"})
    assert (await response.json())["status"] == "ok"
    recorded = openapi_traffic.RECORDER.exchanges[before:]
    assert [(e.method, e.path, e.status, e.query) for e in recorded] == [("GET", "/healthz", 200, {"probe": "1"})]
    assert recorded[0].test.endswith("test_test_client_requests_are_recorded")
    # the stray query parameter is exactly what the end-of-run check reports
    assert check_exchange(recorded[0]) == ["undocumented query parameters ['probe']"]
    openapi_traffic.RECORDER.exchanges[before:] = []  # not a failure of the suite
