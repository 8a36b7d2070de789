"""Whether a request arrived over TLS.

True when this server's own connection is TLS, or when the request carries
``X-Forwarded-Proto: https`` AND the peer address (the proxy that forwarded
it) is in ``server.trusted_proxies``.  Anyone else's ``X-Forwarded-Proto`` is
ignored: a client must not be able to claim TLS it does not have.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.http.keys import CONFIG_KEY


def _peer_ip(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return None
    try:
        address = ipaddress.ip_address(peer[0] if isinstance(peer, (tuple, list)) else peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_secure(request: web.Request) -> bool:
    transport = request.transport
    if transport is not None and transport.get_extra_info("ssl_object") is not None:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto")
    if forwarded is None or forwarded.split(",")[0].strip().lower() != "https":
        return False
    proxies = request.app[CONFIG_KEY].server.trusted_proxies
    peer = _peer_ip(request)
    return peer is not None and any(peer in network for network in proxies)
