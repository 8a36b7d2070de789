"""pytest plugin: every HTTP exchange the test suite makes through aiohttp (the
in-process TestClient, and ClientSession against gateways served in their own
processes) is checked against the OpenAPI document (gateway/http/openapi.json) at the
end of the run.

Recording wraps ``aiohttp.test_utils.TestClient._request`` and
``aiohttp.ClientSession._request`` (every ``get``, ``post``, ... goes through them;
the TestClient's own inner session is not recorded twice); the response body is
read there, which aiohttp caches, so tests read it as usual.  At session end each
exchange must:

- hit a documented path and method, unless the answer is 404/405 (tests of
  unknown routes and methods) - then it must still be a JSON error;
- answer a status code the operation documents, with a body that matches the
  documented media type and JSON schema (empty documented bodies stay empty);
- when the answer is a success (2xx), send a request that matches the
  document: JSON body, path and query parameters.  Requests the server
  refused (4xx) are exactly the ones that did not match, so they are not
  checked against the request schema.

Paths under ``/__test__/`` (test-only routes a test adds to an app) and under
``/docs/`` (the static files of the docs page, not API) are skipped.  Problems
are printed in the terminal summary and fail the run.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils

from gateway.http.docs import openapi_document

# Served, but not API: test-only routes, and the docs page's static files.
UNDOCUMENTED_PREFIXES = ("/__test__/", "/docs/")
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


@dataclass
class Exchange:
    """One request/response pair, as the test client saw it."""

    test: str
    method: str
    path: str
    query: dict[str, str]
    request_json: Any | None
    request_has_body: bool
    status: int
    content_type: str
    body: bytes


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)
    current_test: str = "?"


RECORDER = Recorder()


# --------------------------------------------------------------------------- recording


def _request_body(kwargs: dict[str, Any]) -> tuple[Any | None, bool]:
    if kwargs.get("json") is not None:
        return kwargs["json"], True
    data = kwargs.get("data")
    if data is None:
        return None, False
    if isinstance(data, (bytes, bytearray, str)):
        try:
            return json.loads(data), True
        except ValueError:
            return None, True
    return None, True


_IN_TEST_CLIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_test_client", default=False)


async def _record(method: str, kwargs: dict[str, Any], response: Any) -> None:
    try:
        body = await response.read()
    except Exception:  # noqa: BLE001 - a body the test will fail on itself
        body = b""
    request_json, has_body = _request_body(kwargs)
    url = response.url
    RECORDER.exchanges.append(Exchange(
        test=RECORDER.current_test, method=method.upper(), path=url.path, query=dict(url.query),
        request_json=request_json, request_has_body=has_body, status=response.status,
        content_type=response.content_type, body=body,
    ))


def _install() -> None:
    original = test_utils.TestClient._request
    if getattr(original, "_openapi_recorder", False):
        return
    original_session = aiohttp.ClientSession._request

    async def _request(self: Any, method: str, path: Any, **kwargs: Any) -> Any:
        token = _IN_TEST_CLIENT.set(True)
        try:
            response = await original(self, method, path, **kwargs)
        finally:
            _IN_TEST_CLIENT.reset(token)
        await _record(method, kwargs, response)
        return response

    async def _session_request(self: Any, method: str, url: Any, **kwargs: Any) -> Any:
        response = await original_session(self, method, url, **kwargs)
        if not _IN_TEST_CLIENT.get():
            await _record(method, kwargs, response)
        return response

    _request._openapi_recorder = True  # type: ignore[attr-defined]
    test_utils.TestClient._request = _request  # type: ignore[method-assign]
    aiohttp.ClientSession._request = _session_request  # type: ignore[method-assign]


# --------------------------------------------------------------------------- checking


@cache
def _document() -> dict[str, Any]:
    return openapi_document()


@cache
def _path_patterns() -> list[tuple[re.Pattern[str], str]]:
    """(regex, template) for every documented path; literal templates first."""
    patterns = []
    for template in _document()["paths"]:
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        patterns.append((re.compile(f"^{regex}$"), template))
    return sorted(patterns, key=lambda p: p[1].count("{"))


def find_template(path: str) -> str | None:
    for regex, template in _path_patterns():
        if regex.match(path):
            return template
    return None


def _validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    # Components ride along at the root so "#/components/..." references resolve.
    root = {**schema, "components": _document()["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def _schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in _validator(schema).iter_errors(value)][:3]


def _resolve(obj: dict[str, Any]) -> dict[str, Any]:
    ref = obj.get("$ref")
    if not ref:
        return obj
    node: Any = _document()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(node)


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    if schema.get("type") == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def check_exchange(ex: Exchange) -> list[str]:
    """What is wrong with one exchange, against the document (empty: nothing)."""
    problems: list[str] = []
    if ex.path.startswith(UNDOCUMENTED_PREFIXES):
        return problems
    template = find_template(ex.path)
    method = "get" if ex.method == "HEAD" else ex.method.lower()
    operation = _document()["paths"].get(template or "", {}).get(method) if template else None
    if operation is None:
        if ex.status in (404, 405):
            if ex.method != "HEAD" and ex.content_type != "application/json":
                problems.append(f"{ex.status} answer is {ex.content_type or 'empty'}, not JSON")
            return problems
        return [f"{ex.method} {ex.path} answered {ex.status} but is not in the document"]
    responses = operation.get("responses", {})
    documented = responses.get(str(ex.status)) or responses.get(f"{ex.status // 100}XX") or responses.get("default")
    if documented is None:
        problems.append(f"status {ex.status} is not documented for {ex.method} {template}")
    else:
        documented = _resolve(documented)
        content = documented.get("content")
        if ex.method == "HEAD":
            pass
        elif not content:
            if ex.body:
                problems.append(f"{ex.status}: documented without a body, got {len(ex.body)} bytes")
        elif ex.content_type not in content:
            problems.append(f"{ex.status}: content type {ex.content_type!r} is not one of {sorted(content)}")
        elif ex.content_type == "application/json":
            schema = content["application/json"].get("schema")
            try:
                value = json.loads(ex.body)
            except ValueError:
                problems.append(f"{ex.status}: the body is not JSON")
            else:
                if schema is not None:
                    problems += [f"{ex.status} response {e}" for e in _schema_errors(schema, value)]
    if 200 <= ex.status < 300:
        problems += _check_request(ex, template or "", operation)
    return problems


def _check_request(ex: Exchange, template: str, operation: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    names = re.findall(r"\{([^/]+?)\}", template)
    values = re.match(_path_patterns_regex(template), ex.path)
    path_values = dict(zip(names, values.groups())) if values else {}
    for parameter in map(_resolve, operation.get("parameters", [])):
        schema = parameter.get("schema", {})
        where, name = parameter["in"], parameter["name"]
        if where == "path" and name in path_values:
            problems += [f"path parameter {name}: {e}" for e in _schema_errors(schema, _coerce(path_values[name], schema))]
        elif where == "query" and name in ex.query:
            problems += [f"query parameter {name}: {e}" for e in _schema_errors(schema, _coerce(ex.query[name], schema))]
        elif where == "query" and parameter.get("required"):
            problems.append(f"required query parameter {name} is missing")
    undocumented = set(ex.query) - {p["name"] for p in map(_resolve, operation.get("parameters", [])) if p["in"] == "query"}
    if undocumented:
        problems.append(f"undocumented query parameters {sorted(undocumented)}")
    body = operation.get("requestBody")
    if body is not None:
        body = _resolve(body)
        schema = body.get("content", {}).get("application/json", {}).get("schema")
        if ex.request_json is None:
            if body.get("required") and not ex.request_has_body:
                problems.append("the request body is required but none was sent")
        elif schema is not None:
            problems += [f"request body {e}" for e in _schema_errors(schema, ex.request_json)]
    return problems


@cache
def _path_patterns_regex(template: str) -> str:
    return "^" + re.sub(r"\\\{[^/]+?\\\}", "([^/]+)", re.escape(template)) + "$"


def all_problems() -> Iterator[tuple[Exchange, list[str]]]:
    for ex in RECORDER.exchanges:
        problems = check_exchange(ex)
        if problems:
            yield ex, problems


# --------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    _install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    RECORDER.current_test = item.nodeid
    try:
        return (yield)
    finally:
        RECORDER.current_test = "?"


def _report(session: pytest.Session) -> list[str]:
    lines: list[str] = []
    for ex, problems in all_problems():
        lines.append(f"{ex.method} {ex.path} -> {ex.status} ({ex.test})")
        lines += [f"    {p}" for p in problems]
    return lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    lines = _report(session)
    session.config.stash[_REPORT] = lines
    if lines and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, [])
    count = len(RECORDER.exchanges)
    if lines:
        terminalreporter.section("HTTP traffic not matching gateway/http/openapi.json", red=True)
        for line in lines:
            terminalreporter.write_line(line)
    elif count:
        terminalreporter.write_line(f"openapi: {count} HTTP exchanges of the test suite match gateway/http/openapi.json")


_REPORT = pytest.StashKey[list[str]]()
