"""Per-request counts and timings are held in the process and flushed as prometheus_client would
have recorded them one by one (gateway.core.metrics._Held)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.core import metrics


def _samples(text: str, name: str, route: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and f'route="{route}"' in line:
            key, _, value = line.rpartition(" ")
            out[key.split("{")[0] + "{" + ",".join(p for p in key.split("{")[1].rstrip("}").split(",")
                                                    if p.startswith("le="))] = float(value)
    return out


def test_held_timings_flush_to_what_observe_would_have_recorded() -> None:
    route = "/test/held/{x}"
    # On, below and above bucket bounds, and past the last finite one.
    durations = [0.0005, 0.001, 0.0011, 0.0025, 0.003, 0.7, 1.0, 12.0, 45.0, 0.0, 0.049999]
    reference_registry = CollectorRegistry()
    reference = Histogram("reference_seconds", "what observe() records", ["route", "method"],
                          buckets=metrics._HTTP_BUCKETS, registry=reference_registry)
    for d in durations:
        metrics.observe_request(route, "POST", 201, d)
        reference.labels(route, "POST").observe(d)
    before_flush = metrics.http_requests.labels(route, "POST", "201")._value.get()
    assert before_flush == 0  # held, not yet written

    text = metrics.render()[0].decode()  # a scrape of this process flushes first
    ours = _samples(text, "gateway_http_request_duration_seconds", route)
    theirs = _samples(generate_latest(reference_registry).decode(), "reference_seconds", route)
    assert ours and {k.replace("gateway_http_request_duration_seconds", "reference_seconds"): v
                     for k, v in ours.items()} == theirs
    assert metrics.http_requests.labels(route, "POST", "201")._value.get() == len(durations)


def test_holding_is_bounded() -> None:
    route = "/test/bounded"
    for _ in range(metrics.HOLD_MAX):
        metrics.observe_request(route, "GET", 200, 0.002)
    # count + timing per request: the bound was reached half-way and flushed then.
    written = metrics.http_requests.labels(route, "GET", "200")._value.get()
    assert metrics.HOLD_MAX // 2 - 1 <= written <= metrics.HOLD_MAX
    metrics.flush()
    assert metrics.http_requests.labels(route, "GET", "200")._value.get() == metrics.HOLD_MAX
