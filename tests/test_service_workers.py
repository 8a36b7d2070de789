"""`gateway serve` as a real process on a fresh SoftHSM2 token: several workers on one port,
graceful shutdown with a request in flight, /readyz following a hung token, the plain-HTTP
probe listener, and JSON answers to malformed HTTP on the real listener."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.service_support import (
    ServiceSetup,
    get_json,
    hung_token,
    make_setup,
    maps_of,
    metric,
    parent_of,
    request,
    running,
    tls_context,
)
from gateway.core.metrics import FLUSH_SECONDS
from gateway.server import worker_cpus
from tests.tokens import SOFTHSM_MODULE

MAX_ATTEMPTS = 400


def test_two_workers_answer_on_one_port(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    with running(setup, "--workers", "2") as server:
        assert "(2 workers" in "".join(server.stdout)
        pids: set[int] = set()
        requests = 0
        while len(pids) < 2 and requests < MAX_ATTEMPTS:
            status, body = get_json(setup, "/healthz")
            assert status == 200
            pids.add(body["pid"])
            requests += 1
        assert len(pids) == 2, f"only {pids} answered {requests} requests"
        supervisor = server.proc.pid
        assert supervisor not in pids and {parent_of(pid) for pid in pids} == {supervisor}
        # Each worker loaded SoftHSM2 itself; the supervisor that forked them never did.
        module = os.path.realpath(SOFTHSM_MODULE)
        assert all(module in maps_of(pid) for pid in pids)
        assert module not in maps_of(supervisor)

        # Any worker answers /metrics for all of them (prometheus_client multiprocess mode); the
        # other worker's counts arrive within its flush interval (metrics.FLUSH_SECONDS).
        deadline = time.monotonic() + 3 * FLUSH_SECONDS + 5
        while True:
            _, _, text = request(setup, "GET", "/metrics")
            counted = metric(text.decode(), "gateway_http_requests_total", route="/healthz", method="GET", status="200")
            if counted == requests or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert counted == requests
        assert metric(text.decode(), "gateway_token_sessions_max", token="hsm") == 2 * 4  # 4 sessions per worker

        assert server.stop(signal.SIGTERM) == 0
    entries = server.log_entries()
    for pid in pids:
        mine = [e["msg"] for e in entries if e.get("pid") == pid]
        assert "tokens closed (sessions logged out)" in mine and "stopped" in mine
    assert any(e["msg"] == "all workers stopped" and e["pid"] == supervisor for e in entries)


def _connect_refused(setup: ServiceSetup) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", setup.port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def _read_until(sock: ssl.SSLSocket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_graceful_shutdown_completes_a_request_in_flight(tmp_path: Path) -> None:
    """SIGTERM while a request waits on the token: the listener closes at once, the request
    still gets its full answer, then the sessions are closed and the process exits 0."""
    setup = make_setup(tmp_path, server="readiness_timeout = 300\nshutdown_timeout = 120")
    with running(setup) as server:
        assert get_json(setup, "/readyz") == (200, {"ready": True, "tokens": {"hsm": True}})
        with hung_token(setup):
            raw = socket.create_connection(("127.0.0.1", setup.port), timeout=120)
            sock = tls_context(setup.ca).wrap_socket(raw, server_hostname="127.0.0.1")
            # "100 Continue" is the server saying it has the request and is handling it.
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                         b"Connection: close\r\n\r\n")
            interim = _read_until(sock, b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
            rest = interim.split(b"\r\n\r\n", 1)[1]

            server.proc.send_signal(signal.SIGTERM)
            attempts = 0
            while not _connect_refused(setup):  # stops accepting while the request is still running
                attempts += 1
                assert attempts < MAX_ATTEMPTS, "the listener stayed open after SIGTERM"
                time.sleep(0.05)
            assert server.proc.poll() is None  # ... and waits for it
        answer = _read_until(sock, b"}", rest)  # the token answers again: the request completes
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK"), answer
        assert body == b'{"ready": true, "tokens": {"hsm": true}}'
        assert server.stop() == 0
    messages = [e["msg"] for e in server.log_entries()]
    assert messages.index("tokens closed (sessions logged out)") > messages.index(
        "shutting down: not accepting new connections; in-flight requests have 120s")


def test_readyz_turns_not_ready_while_the_token_hangs_and_ready_after(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, server="readiness_timeout = 1")
    with running(setup) as server:
        assert get_json(setup, "/readyz") == (200, {"ready": True, "tokens": {"hsm": True}})
        with hung_token(setup):
            assert get_json(setup, "/readyz") == (503, {"ready": False, "tokens": {"hsm": False}})
            # the process itself is alive and says so, on both listeners
            assert get_json(setup, "/healthz")[0] == 200
            assert get_json(setup, "/readyz", plain=True)[0] == 503
            _, _, text = request(setup, "GET", "/metrics", plain=True)
            assert metric(text.decode(), "gateway_token_ready", token="hsm") == 0
        attempts = 0
        while get_json(setup, "/readyz")[0] != 200:  # ready again, without a restart
            attempts += 1
            assert attempts < MAX_ATTEMPTS, "/readyz did not recover"
            time.sleep(0.1)
        assert get_json(setup, "/readyz", plain=True) == (200, {"ready": True, "tokens": {"hsm": True}})
        _, _, text = request(setup, "GET", "/metrics", plain=True)
        assert metric(text.decode(), "gateway_token_ready", token="hsm") == 1
        assert server.stop() == 0
    warnings = [e for e in server.log_entries() if e["level"] == "warning"]
    assert any("did not answer within 1s" in e["msg"] for e in warnings)


def test_plain_listener_serves_only_probes_and_the_tls_listener_is_hardened(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    with running(setup):
        assert get_json(setup, "/healthz", plain=True)[0] == 200
        status, headers, _ = request(setup, "GET", "/metrics", plain=True)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        for path in ("/docs", "/openapi.json", "/api/v1/vaults"):
            status, headers, body = request(setup, "GET", path, plain=True)
            assert status == 404 and headers["content-type"] == "application/json", path
        # over TLS: HSTS, and the full API reference
        status, headers, _ = request(setup, "GET", "/openapi.json")
        assert status == 200 and headers["strict-transport-security"].startswith("max-age=")
        assert headers["server"] == "pkcs11-gateway"
        # malformed HTTP on the real listener gets a JSON answer without a version banner
        raw = socket.create_connection(("127.0.0.1", setup.port), timeout=60)
        sock = tls_context(setup.ca).wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        answer = _read_until(sock, b"}")
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0] and b"application/json" in head
        assert b"aiohttp" not in head and b"Python" not in head
        assert body.startswith(b'{"message": "malformed request')


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    with running(setup, "--workers", "2") as server:
        first: set[int] = set()
        while len(first) < 2:
            first.add(get_json(setup, "/healthz")[1]["pid"])
            assert len(first) <= 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        attempts = 0
        while not (seen - first):  # a new worker answers, and the survivor still does
            attempts += 1
            assert attempts < MAX_ATTEMPTS, f"no replacement for worker {victim}"
            try:
                status, body = get_json(setup, "/healthz")
            except OSError:  # a connection the killed worker had accepted
                continue
            if status == 200:
                seen.add(body["pid"])
            time.sleep(0.02)
        assert victim not in seen
        (replacement,) = seen - first
        assert parent_of(replacement) == server.proc.pid
        assert server.stop() == 0
    assert any("exited with code -9; starting a new one" in e["msg"] for e in server.log_entries())


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphaned worker keeps serving (and holding HSM sessions) after its supervisor died."""
    setup = make_setup(tmp_path)
    with running(setup, "--workers", "2") as server:
        pids: set[int] = set()
        attempts = 0
        while len(pids) < 2:
            attempts += 1
            assert attempts < MAX_ATTEMPTS
            pids.add(get_json(setup, "/healthz")[1]["pid"])
        server.proc.kill()
        server.proc.wait()
        attempts = 0
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            attempts += 1
            assert attempts < MAX_ATTEMPTS, "a worker outlived its supervisor"
            time.sleep(0.05)
    workers_said = [e["msg"] for e in server.log_entries() if e.get("pid") in pids]
    assert workers_said.count("tokens closed (sessions logged out)") == 2  # they shut down cleanly


def _state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    except OSError:
        return "gone"
    return ""


def _cpus_of(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid``."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def _two_pids(setup: ServiceSetup) -> set[int]:
    pids: set[int] = set()
    attempts = 0
    while len(pids) < 2:
        attempts += 1
        assert attempts < MAX_ATTEMPTS
        try:
            pids.add(get_json(setup, "/healthz")[1]["pid"])
        except OSError:  # a connection a killed worker had accepted
            continue
    return pids


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_two_workers_on_two_cpus_keep_to_one_cpu_each(tmp_path: Path) -> None:
    """server.cpu_affinity = "auto" (the default): each worker, its token threads and its audit
    thread on its own CPU (only the threads of SoftHSM2's writer may use both, lanes.py), and a
    replacement worker on the CPU of the one it replaces; "off" leaves them to the kernel."""
    two = frozenset(sorted(os.sched_getaffinity(0))[:2])
    setup = make_setup(tmp_path)
    with running(setup, "--workers", "2", cpus=set(two)) as server:
        pids = _two_pids(setup)
        placed = {pid: frozenset(os.sched_getaffinity(pid)) for pid in pids}  # the workers' main threads
        assert all(len(cpus) == 1 for cpus in placed.values()) and frozenset().union(*placed.values()) == two
        deadline = time.monotonic() + 30
        while True:
            threads = {pid: [frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")]
                       for pid in pids}
            assert all(set(sets) <= {placed[pid], two} for pid, sets in threads.items()), threads
            # The event loop, 4 token threads and the audit thread.  A token thread that made
            # long calls at start (creating the deployment's keys) may use both CPUs until its
            # calls are short again: short token calls (/readyz) bring it back.
            if all(sets.count(placed[pid]) >= 6 for pid, sets in threads.items()):
                break
            assert time.monotonic() < deadline, threads
            for _ in range(20):
                request(setup, "GET", "/readyz")
        assert _cpus_of(server.proc.pid) == {two}

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no replacement worker"
            try:
                pid = get_json(setup, "/healthz")[1]["pid"]
            except OSError:
                continue
            if pid not in pids:
                break
        assert frozenset(os.sched_getaffinity(pid)) == placed[victim]
        assert server.stop() == 0
    assert any(f"on CPU {min(two)}" in e["msg"] for e in server.log_entries())

    setup = make_setup(tmp_path / "off", server='cpu_affinity = "off"')
    with running(setup, "--workers", "2", cpus=set(two)) as server:
        assert all(_cpus_of(pid) == {two} for pid in _two_pids(setup))
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("workers", "allowed", "expected"),
    [
        (2, {0, 1}, [{0}, {1}]),
        (4, {0, 1}, [{0}, {1}, {0}, {1}]),  # two workers per CPU
        (2, {3, 5}, [{3}, {5}]),  # the CPUs the supervisor may use, not 0..n-1
        (1, {0, 1}, [None]),  # one process: its token threads may use the other CPU
        (2, {0, 1, 2, 3}, [None, None]),  # fewer workers than CPUs: idle CPUs for token threads
        (3, {0, 1}, [None, None, None]),  # one CPU would get two workers, the other one
    ],
)
def test_worker_cpus(workers: int, allowed: set[int], expected: list[set[int] | None]) -> None:
    assert [worker_cpus(slot, workers, allowed) for slot in range(workers)] == expected
