"""The API reference: ``GET /openapi.json`` and a browsable ``GET /docs`` page.

The OpenAPI 3.1 document is ``openapi.json`` next to this module (packaged
with the gateway; dialect routes are added to it by whoever adds the route,
and ``tests/test_service_openapi.py`` keeps it complete).  ``/docs`` is
Swagger UI 5, whose files come from the PyPI package ``swagger-ui-py`` and are
served from this process: the page loads nothing from any other host, so it
works offline and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any, Final

from aiohttp import web

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
# Only the files the page needs; anything else in the package directory stays unserved.
ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
DOCS_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
ASSET_CACHE: Final = "public, max-age=3600"

_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>pkcs11-gateway API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"><noscript>This page needs JavaScript; the raw document is at
    <a href="/openapi.json">/openapi.json</a>.</noscript></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

# A file of its own (not inline) so the page runs under script-src 'self'.
_INIT_JS: Final = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def assets_dir() -> Path:
    """Swagger UI's static directory inside the installed ``swagger_ui`` package.

    Located without importing the package (its ``__init__`` pulls in web
    framework glue we do not use).
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed (`make` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@cache
def openapi_bytes() -> bytes:
    """The document as served (read once)."""
    return OPENAPI_PATH.read_bytes()


def openapi_document() -> dict[str, Any]:
    """The document, parsed (a fresh copy each call)."""
    document: dict[str, Any] = json.loads(openapi_bytes())
    return document


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type="application/json")


async def docs_handler(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html", headers={"Content-Security-Policy": DOCS_CSP})


async def init_js_handler(request: web.Request) -> web.Response:
    return web.Response(text=_INIT_JS, content_type="text/javascript", headers={"Cache-Control": ASSET_CACHE})


async def asset_handler(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(assets_dir() / name, headers={"Content-Type": ASSETS[name],
                                                          "Cache-Control": ASSET_CACHE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_handler, name="openapi")
    app.router.add_get("/docs", docs_handler, name="docs")
    app.router.add_get("/docs/init.js", init_js_handler, name="docs-init")
    app.router.add_get("/docs/assets/{name}", asset_handler, name="docs-asset")
