"""Helpers for tests that run `gateway serve` as a real process on a fresh SoftHSM2 token.

Each setup gets its own token directory (created with gateway.provision before the
server process starts, so its SoftHSM2 sees it), its own dev CA (gateway.tls), a free
port, and JSON logs captured to a file.  The PIN reaches the server through an
environment variable, as in production.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gateway.provision import ensure_softhsm_token
from gateway.tls import ensure_dev_tls
from tests.tokens import SOFTHSM_MODULE

PIN = "svc-pin-4f1c9a77e2"  # distinctive, so the secret scan can look for it
SO_PIN = "svc-so-pin-0b2d6e91c3"
PIN_ENV = "GATEWAY_TEST_SERVICE_PIN"
# Safety nets against a hung process, not speed requirements.
START_DEADLINE_SECONDS = 120.0
STOP_DEADLINE_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceSetup:
    """A config for one server process, on its own SoftHSM2 token."""

    directory: Path
    config: Path
    port: int
    plain_port: int
    ca: Path
    token_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def generation_file(self) -> Path:
        """SoftHSM2's per-token generation file; holding its lock makes the token hang."""
        (found,) = (self.token_dir / "tokens").glob("*/generation")
        return found


def make_setup(directory: Path, *, label: str = "service", server: str = "", extra: str = "") -> ServiceSetup:
    directory.mkdir(parents=True, exist_ok=True)
    token_dir = directory / "softhsm"
    conf = ensure_softhsm_token(token_dir, label, PIN, SO_PIN)
    tls = ensure_dev_tls(directory / "state" / "tls")
    port, plain_port = free_port(), free_port()
    config = directory / "gateway.toml"
    config.write_text(f"""\
state_dir = "{directory / 'state'}"

[server]
listen = "127.0.0.1:{port}"
plain_listen = "127.0.0.1:{plain_port}"
tls_cert = "{tls.cert}"
tls_key = "{tls.key}"
{server}

[logging]
format = "json"
level = "info"

[[tokens]]
name = "hsm"
module = "{SOFTHSM_MODULE}"
label = "{label}"
pin_env = "{PIN_ENV}"
sessions = 4
[tokens.environment]
SOFTHSM2_CONF = "{conf}"
{extra}
""")
    env = {**os.environ, PIN_ENV: PIN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return ServiceSetup(directory, config, port, plain_port, tls.ca_cert, token_dir, env)


class Server:
    """`gateway serve` as a child process; stdout is watched for the ready banner."""

    def __init__(self, setup: ServiceSetup, *args: str, cpus: set[int] | None = None) -> None:
        """``cpus``: the CPUs the server may use (as under ``taskset``); default, this process's."""
        self.setup = setup
        self.log_path = setup.directory / f"server-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(setup.config), *args],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=setup.env,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        self.stdout: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def wait_ready(self) -> str:
        """The banner `gateway serve` prints once every worker listens."""
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the server did not start; log:\n{self.log_text()[-3000:]}") from None
            if line is None:
                raise AssertionError(f"the server exited ({self.proc.wait()}); log:\n{self.log_text()[-3000:]}")
            self.stdout.append(line)
            if line.startswith("pkcs11-gateway: serving"):
                return "".join(self.stdout)

    def output(self, quiet: float = 0.5) -> str:
        """Everything printed so far: the lines after the banner's first are read until
        none comes for ``quiet`` seconds."""
        while True:
            try:
                line = self._lines.get(timeout=quiet)
            except queue.Empty:
                return "".join(self.stdout)
            if line is None:
                return "".join(self.stdout)
            self.stdout.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_SECONDS)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries


@contextlib.contextmanager
def running(setup: ServiceSetup, *args: str, cpus: set[int] | None = None) -> Iterator[Server]:
    server = Server(setup, *args, cpus=cpus)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def request(setup: ServiceSetup, method: str, path: str, *, plain: bool = False, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so SO_REUSEPORT spreads them over the workers)."""
    if plain:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", setup.plain_port, timeout=60)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", setup.port, context=tls_context(setup.ca), timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(setup: ServiceSetup, path: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, body = request(setup, "GET", path, **kwargs)
    return status, json.loads(body)


@contextlib.contextmanager
def hung_token(setup: ServiceSetup) -> Iterator[None]:
    """Make the token hang from outside, as an HSM that stops answering: hold SoftHSM2's
    lock on the token's generation file; every call of the server on the token waits."""
    with setup.generation_file().open("r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the first sample of ``name`` with ``labels`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return float(value)
    raise KeyError(f"{name} {labels}")


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])
