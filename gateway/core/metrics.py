"""Prometheus metrics of the gateway, and the small API the dialects use to count events.

Dialect code counts its own events::

    from gateway.core import metrics
    metrics.auth_failures.labels(dialect="hem").inc()     # a request refused with 401
    metrics.keys_derived.labels(dialect="vault").inc()    # a key created by derivation

The HTTP layer records requests (:func:`observe_request`), token calls are
timed by :func:`instrument_tokens` (it wraps ``Token.run`` of each token from
the outside), and session-pool gauges are refreshed from
``Token.pool_stats()`` by :func:`update_token_gauges`.

With several workers (``gateway serve --workers N``) the supervisor points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start;
prometheus_client then keeps every worker's values in files there and
:func:`render` adds them up, so any worker answers ``/metrics`` for all of
them.  Gauges say how they combine (``livesum``: summed over live workers).

Label values are bounded sets (route templates, token names, adapter method
names, dialect names): never a kid, a path with ids in it, or anything a
client chose freely.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from gateway.token import Token, TokenSet


MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# HTTP latency: fast probes to slow HSM round trips.
_HTTP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Token calls: SoftHSM2 in-memory ops take tens of microseconds.
_TOKEN_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                         2.5, 5.0)

# --------------------------------------------------------------------------- the metrics

# The *_created series double the output and say nothing a scraper needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

http_requests = Counter(
    "gateway_http_requests", "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
)
http_request_seconds = Histogram(
    "gateway_http_request_duration_seconds", "Time from request start to response, by route template and method",
    ["route", "method"], buckets=_HTTP_BUCKETS,
)
token_call_seconds = Histogram(
    "gateway_token_call_duration_seconds",
    "Token adapter call latency by token and operation (includes waiting for a session thread)",
    ["token", "operation"], buckets=_TOKEN_BUCKETS,
)
token_call_errors = Counter(
    "gateway_token_call_errors", "Token adapter calls that raised, by token, operation and error class",
    ["token", "operation", "error"],
)
token_sessions_in_use = Gauge(
    "gateway_token_sessions_in_use", "PKCS#11 sessions currently lent out to a call", ["token"],
    multiprocess_mode="livesum",
)
token_sessions_waiting = Gauge(
    "gateway_token_sessions_waiting", "Calls waiting for a free PKCS#11 session", ["token"],
    multiprocess_mode="livesum",
)
token_sessions_open = Gauge(
    "gateway_token_sessions_open", "PKCS#11 sessions open (pool size is the upper bound)", ["token"],
    multiprocess_mode="livesum",
)
token_sessions_max = Gauge(
    "gateway_token_sessions_max", "Configured session pool size", ["token"], multiprocess_mode="livesum",
)
token_leftovers_pending = Gauge(
    "gateway_token_leftovers_pending",
    "Kids of failed creating calls not yet swept from the token (see docs/operations.md)", ["token"],
    multiprocess_mode="livesum",
)
token_catch_ups = Gauge(
    "gateway_token_catch_ups",
    "Fresh-view nudges asked for since the worker started: lookups that found nothing after this worker's own "
    "writes (see docs/operations.md)", ["token"], multiprocess_mode="livesum",
)
token_writer = Gauge(
    "gateway_token_writer",
    "1 in the worker that makes the token's object changes for every gateway process (SoftHSM2; see "
    "docs/operations.md), else 0", ["token"], multiprocess_mode="livesum",
)
token_changes_relayed = Gauge(
    "gateway_token_changes_relayed",
    "Object changes this worker sent to the writer process since it started (SoftHSM2; see docs/operations.md)",
    ["token"], multiprocess_mode="livesum",
)
token_ready = Gauge(
    "gateway_token_ready", "1 when the token answered the last readiness check, else 0", ["token"],
    multiprocess_mode="livemin",
)
auth_failures = Counter(
    "gateway_auth_failures", "Requests refused for missing, malformed, forged or expired credentials",
    ["dialect"],
)
keys_derived = Counter(
    "gateway_keys_derived", "Keys created in a token by derivation", ["dialect"],
)

# --------------------------------------------------------------------------- recording


# Labelled children by label values.  ``labels()`` costs a few microseconds (argument
# checks, a lock), paid on every request and token call; the label sets are small and
# fixed (route templates, methods, statuses, operation names), so the children are kept.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (id(metric), *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


class _Held:
    """Per-request counts and timings held in this process and added to the metrics together.

    With several workers every ``inc``/``observe`` of prometheus_client writes
    into a shared file (a lock, a pid check, a write into the mapping), and a
    histogram observation costs two of them.  Three per request was about 7% of
    the event loop thread's time on ``/api/crypto/ecdh`` (py-spy, ``make
    bench``).  Held, a request costs a few dictionary updates here, and
    :func:`flush` adds each label set's counts in one ``inc`` per bucket.

    Flushed: before this process renders ``/metrics``, when
    :data:`HOLD_MAX` observations are held, and by the workers' refresher
    (``gateway.server``, every :data:`FLUSH_SECONDS`), so another worker's
    scrape sees them at most that late.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[Any, int] = {}
        self.timings: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket...]
        self.held = 0

    def count(self, child: Any) -> None:
        with self.lock:
            self.counts[child] = self.counts.get(child, 0) + 1
            self.held += 1
            full = self.held >= HOLD_MAX
        if full:
            flush()

    def time(self, child: Any, seconds: float) -> None:
        with self.lock:
            tally = self.timings.get(child)
            if tally is None:
                tally = self.timings[child] = [0.0] * (1 + len(child._upper_bounds))
            tally[0] += seconds
            tally[1 + bisect.bisect_left(child._upper_bounds, seconds)] += 1  # the first bound >= seconds
            self.held += 1
            full = self.held >= HOLD_MAX
        if full:
            flush()

    def take(self) -> tuple[dict[Any, int], dict[Any, list[float]]]:
        with self.lock:
            counts, timings = self.counts, self.timings
            self.counts, self.timings, self.held = {}, {}, 0
        return counts, timings


FLUSH_SECONDS: Final = 1.0
HOLD_MAX: Final = 1000
_held = _Held()


def flush() -> None:
    """Add what this process holds (see :class:`_Held`) to the metrics."""
    counts, timings = _held.take()
    for counter, n in counts.items():
        counter.inc(n)
    for histogram, tally in timings.items():
        # What Histogram.observe does per observation (prometheus_client 0.x), once per bucket.
        histogram._sum.inc(tally[0])
        for bucket, n in zip(histogram._buckets, tally[1:]):
            if n:
                bucket.inc(n)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request."""
    _held.count(_child(http_requests, route, method, str(status)))
    _held.time(_child(http_request_seconds, route, method), seconds)


def set_token_ready(states: dict[str, bool]) -> None:
    """Record the outcome of a readiness check (token name -> ready)."""
    for name, ok in states.items():
        token_ready.labels(token=name).set(1 if ok else 0)


def update_token_gauges(tokens: Iterable[Token]) -> None:
    """Copy each token's session-pool statistics into the gauges (cheap: no PKCS#11 call)."""
    for token in tokens:
        stats = token.pool_stats()
        token_sessions_in_use.labels(token=token.name).set(stats.in_use)
        token_sessions_waiting.labels(token=token.name).set(stats.waiting)
        token_sessions_open.labels(token=token.name).set(stats.open)
        token_sessions_max.labels(token=token.name).set(stats.size)
        token_leftovers_pending.labels(token=token.name).set(token.leftovers.pending)
        token_catch_ups.labels(token=token.name).set(token.stale.nudges)
        relay = token.relay
        token_writer.labels(token=token.name).set(1 if relay is not None and relay.is_writer else 0)
        token_changes_relayed.labels(token=token.name).set(relay.relayed if relay is not None else 0)


def instrument_token(token: Token) -> None:
    """Time every ``await token.run(fn, ...)`` of ``token`` by ``fn.__name__``; idempotent."""
    if any(getattr(o, "_gateway_metrics", False) for o in token.observers):
        return
    name = token.name

    def observe(operation: str, seconds: float, error: BaseException | None) -> None:
        _held.time(_child(token_call_seconds, name, operation), seconds)
        if isinstance(error, Exception):
            token_call_errors.labels(token=name, operation=operation, error=type(error).__name__).inc()

    observe._gateway_metrics = True  # type: ignore[attr-defined]
    token.observers.append(observe)


def instrument_tokens(tokens: TokenSet) -> None:
    """:func:`instrument_token` for every token of the set."""
    for token in tokens:
        instrument_token(token)


# --------------------------------------------------------------------------- exposition


def multiprocess_dir() -> str | None:
    """The shared metrics directory when running as one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(accept: str = "") -> tuple[bytes, str]:
    """(body, content type): this process's metrics, or all workers' added up, in the
    format the scraper's ``Accept`` header asks for (Prometheus text by default, or OpenMetrics)."""
    flush()
    encoder, content_type = choose_encoder(accept)
    if multiprocess_dir() is None:
        return encoder(REGISTRY), content_type
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return encoder(registry), content_type


def worker_exited(pid: int, directory: str) -> None:
    """Drop the live gauges of a worker that ended (called by the supervisor; its
    counters and histograms stay, so totals never go backwards)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
