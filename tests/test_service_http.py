"""What every request goes through, on a real SoftHSM2 token: request ids, JSON errors for
every failure (aiohttp's own 404/405/413 and malformed HTTP too), body limit, per-request
timeout, security headers, a Server header without versions, /metrics, /docs and /openapi.json."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Config, load_config
from gateway.core import metrics
from gateway.http.app import create_app
from gateway.http.docs import OPENAPI_PATH
from gateway.http.middleware import GatewayRunner
from tests.conftest import SoftHSMSettingsFactory
from tests.tokens import SOFTHSM_MODULE

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MAX_BODY = 2048
TIMEOUT = 1.5


@pytest.fixture(scope="module")
def service_tokens(softhsm_settings: SoftHSMSettingsFactory) -> Iterator[Any]:
    from gateway.token import TokenSet

    tokens = TokenSet.open([softhsm_settings("service", name="service", sessions=2)])
    yield tokens
    tokens.close()


@pytest.fixture
def config(tmp_path: Path, softhsm_dir: Path) -> Config:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""\
        state_dir = "{tmp_path / 'state'}"
        [server]
        max_body_bytes = {MAX_BODY}
        request_timeout = {TIMEOUT}
        [[tokens]]
        name = "service"
        module = "{SOFTHSM_MODULE}"
        label = "service"
        pin = "1234"
        [tokens.environment]
        SOFTHSM2_CONF = "{softhsm_dir / 'softhsm2.conf'}"
        """))
    return load_config(path)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.json_response({})


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("internal detail 7f3e that must stay in the logs")


@pytest.fixture
async def client(aiohttp_client: ClientFactory, config: Config, service_tokens: Any) -> TestClient[Any, Any]:
    app = create_app(config, service_tokens)
    # Test-only routes (the OpenAPI traffic check skips /__test__/).
    app.router.add_get("/__test__/slow", _slow)
    app.router.add_get("/__test__/boom", _boom)
    app.router.add_post("/__test__/echo", _echo)
    return await aiohttp_client(app)


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"bytes": len(await request.read())})


# --------------------------------------------------------------------------- request id


async def test_request_id_is_made_echoed_and_kept_from_a_proxy(client: TestClient[Any, Any]) -> None:
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    ids = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]

    kept = await client.get("/healthz", headers={"X-Request-Id": "lb-1234.abcd:5"})
    assert kept.headers["X-Request-Id"] == "lb-1234.abcd:5"
    for hostile in ("x", "a b c d e f g h", "<script>alert(1)</script>", "x" * 65, "id\r\nX-Evil: 1"):
        try:
            replaced = await client.get("/healthz", headers={"X-Request-Id": hostile})
        except ValueError:  # the client itself refuses header injection
            continue
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-Id"])


async def test_request_id_is_in_the_access_log_and_error_logs(
        client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    response = await client.get("/__test__/boom", headers={"X-Request-Id": "trace-0000001"})
    assert response.status == 500
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-0000001"]
    assert {r.name for r in records} >= {"gateway.access", "gateway.http.middleware"}
    access = next(r for r in records if r.name == "gateway.access")
    assert access.fields["status"] == 500 and access.fields["route"] == "/__test__/boom"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- JSON errors


async def test_unknown_route_and_method_are_json(client: TestClient[Any, Any]) -> None:
    missing = await client.get("/no/such/route", headers={"Accept": "text/html"})
    assert missing.status == 404 and missing.content_type == "application/json"
    assert await missing.json() == {"message": "no such route"}

    wrong = await client.delete("/healthz", headers={"Accept": "text/html"})
    assert wrong.status == 405 and wrong.content_type == "application/json"
    assert "DELETE is not allowed" in (await wrong.json())["message"]
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_unexpected_error_is_json_without_traceback(client: TestClient[Any, Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    response = await client.get("/__test__/boom", headers={"Accept": "text/html"})
    assert response.status == 500 and response.content_type == "application/json"
    body = await response.text()
    message = json.loads(body)["message"]
    assert message == f"internal error (request id {response.headers['X-Request-Id']})"
    assert "Traceback" not in body and "7f3e" not in body and "RuntimeError" not in body
    assert any("7f3e" in (r.exc_text or "") or (r.exc_info and "7f3e" in str(r.exc_info[1]))
               for r in caplog.records)  # the detail is logged for the operator


class _GatewayTestServer(TestServer):
    """A test server run by the gateway's own runner (as `gateway serve` does)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)


async def test_malformed_http_gets_a_json_answer(config: Config, service_tokens: Any) -> None:
    server = _GatewayTestServer(create_app(config, service_tokens))
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
    finally:
        await server.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    headers = head.decode().lower()
    assert "content-type: application/json" in headers and "server: pkcs11-gateway" in headers
    assert "aiohttp" not in headers
    assert json.loads(body)["message"].startswith("malformed request")


# --------------------------------------------------------------------------- limits


async def test_body_over_the_limit_is_413(client: TestClient[Any, Any]) -> None:
    ok = await client.post("/__test__/echo", data=b"x" * MAX_BODY)
    assert ok.status == 200 and await ok.json() == {"bytes": MAX_BODY}

    declared = await client.post("/__test__/echo", data=b"x" * (MAX_BODY + 1))
    assert declared.status == 413 and declared.content_type == "application/json"
    assert "body" in (await declared.json())["message"]

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(4):
            yield b"y" * 1024

    chunked = await client.post("/__test__/echo", data=chunks())
    assert chunked.status == 413 and chunked.content_type == "application/json"


async def test_a_request_over_the_timeout_is_504(client: TestClient[Any, Any]) -> None:
    response = await client.get("/__test__/slow")
    assert response.status == 504 and response.content_type == "application/json"
    assert (await response.json())["message"] == f"the request did not complete within {TIMEOUT:g} seconds"


# --------------------------------------------------------------------------- headers


async def test_security_headers_and_a_server_header_without_versions(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/no/such/route", "/openapi.json", "/docs"):
        response = await client.get(path)
        headers = response.headers
        assert headers["Server"] == "pkcs11-gateway", path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "no-store" in headers["Cache-Control"]
        assert "Strict-Transport-Security" not in headers  # plain HTTP here; the TLS tests see it
        joined = " ".join(f"{k}: {v}" for k, v in headers.items()).lower()
        assert "aiohttp" not in joined and "python" not in joined


# --------------------------------------------------------------------------- probes and metrics


async def test_healthz_and_readyz(client: TestClient[Any, Any]) -> None:
    health = await client.get("/healthz")
    assert (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200 and await ready.json() == {"ready": True, "tokens": {"service": True}}


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _value(samples: dict[str, float], name: str, **labels: str) -> float:
    for key, value in samples.items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    raise KeyError(f"{name} {labels}")


async def test_metrics_content(client: TestClient[Any, Any], service_tokens: Any) -> None:
    before = _samples(await (await client.get("/metrics")).text())

    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/no/such/route")).status == 404
    metrics.auth_failures.labels(dialect="service-test").inc()  # the dialects' API
    metrics.keys_derived.labels(dialect="service-test").inc(2)

    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    after = _samples(text)

    def grew(name: str, **labels: str) -> float:
        try:
            old = _value(before, name, **labels)
        except KeyError:
            old = 0.0
        return _value(after, name, **labels) - old

    assert grew("gateway_http_requests_total", route="/healthz", method="GET", status="200") == 3
    assert grew("gateway_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("gateway_http_request_duration_seconds_count", route="/healthz", method="GET") == 3
    assert _value(after, "gateway_http_request_duration_seconds_bucket", route="/healthz", le="+Inf") >= 3
    assert grew("gateway_token_call_duration_seconds_count", token="service", operation="is_ready") == 1
    assert _value(after, "gateway_token_sessions_max", token="service") == service_tokens["service"].pool_stats().size
    assert _value(after, "gateway_token_sessions_in_use", token="service") == 0
    assert _value(after, "gateway_token_sessions_waiting", token="service") == 0
    assert _value(after, "gateway_token_ready", token="service") == 1
    assert grew("gateway_auth_failures_total", dialect="service-test") == 1
    assert grew("gateway_keys_derived_total", dialect="service-test") == 2
    for family in ("gateway_http_requests_total", "gateway_http_request_duration_seconds",
                   "gateway_token_call_duration_seconds", "gateway_token_sessions_in_use",
                   "gateway_token_sessions_waiting", "gateway_auth_failures_total", "gateway_keys_derived_total"):
        assert f"# HELP {family} " in text and f"# TYPE {family} " in text
    # Route templates only: no concrete path, kid or id in any label.
    assert "/no/such/route" not in text


async def test_token_call_errors_are_counted_by_operation(client: TestClient[Any, Any], service_tokens: Any) -> None:
    token = service_tokens["service"]
    from gateway.errors import NotFound

    with pytest.raises(NotFound):
        await token.run(token.get_key, b"\x00" * 16)
    text = await (await client.get("/metrics")).text()
    assert _value(_samples(text), "gateway_token_call_errors_total", token="service", operation="get_key",
                  error="NotFound") >= 1


# --------------------------------------------------------------------------- reference


async def test_openapi_json_is_the_packaged_document(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.read() == OPENAPI_PATH.read_bytes()


async def test_docs_page_loads_only_local_assets(client: TestClient[Any, Any]) -> None:
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "http" not in csp
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from another host
    for source in sources:
        asset = await client.get(source)
        assert asset.status == 200, source
        assert len(await asset.read()) > 0
    init = await (await client.get("/docs/init.js")).text()
    assert 'url: "/openapi.json"' in init and "validatorUrl: null" in init  # no call to the public validator
    for name in ("index.html", "..%2f..%2fdocs.py", "swagger-ui.js.map"):
        assert (await client.get(f"/docs/assets/{name}")).status == 404
