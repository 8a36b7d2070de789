"""A real ``gateway serve --workers N`` for the benchmark: generated config, child process, worker RSS.

The config names the run's fresh tokens (a SoftHSM2 token for HEM, an NSS
database for the Vault dialect), a dev CA and server certificate made for the
run, one HEM user (known by the public key of a passphrase generated here) and
one Vault issuer (an ES256 key generated here).  Everything lives under the
run's temporary folder.
"""

from __future__ import annotations

import base64
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.baseline import REPO
from bench.gw.client import login_public
from gateway.tls import ensure_dev_tls

PIN_ENV = "GATEWAY_BENCH_PIN"
NSS_PIN_ENV = "GATEWAY_BENCH_NSS_PIN"
START_DEADLINE_SECONDS = 180.0  # a safety net against a hung start, not a speed requirement
STOP_DEADLINE_SECONDS = 90.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TokenEntry:
    """One [[tokens]] table."""

    name: str
    module: str
    label: str
    pin: str
    pin_env: str
    sessions: int
    init_args: str | None = None
    environment: dict[str, str] = field(default_factory=dict)

    def toml(self) -> str:
        lines = ["[[tokens]]", f'name = "{self.name}"', f'module = "{self.module}"', f'label = "{self.label}"',
                 f'pin_env = "{self.pin_env}"', f"sessions = {self.sessions}"]
        if self.init_args:
            lines.append(f'init_args = "{self.init_args}"')
        if self.environment:
            lines.append("[tokens.environment]")
            lines += [f'{k} = "{v}"' for k, v in self.environment.items()]
        return "\n".join(lines) + "\n"


@dataclass
class GatewaySetup:
    """A config file and what a client needs to talk to the gateway it describes."""

    directory: Path
    config: Path
    port: int
    ca: Path
    passphrase: str
    eid: str
    issuer_key: ec.EllipticCurvePrivateKey
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def make_setup(directory: Path, tokens: list[TokenEntry], *, hem_token: str, extra: str = "",
               log_level: str = "info") -> GatewaySetup:
    """Write a config for ``tokens`` under ``directory`` (HEM on ``hem_token``, Vault on all)."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = ensure_dev_tls(directory / "tls")
    port = free_port()
    passphrase = secrets.token_urlsafe(18)
    eid = base64.b64encode(secrets.token_bytes(32)).decode()
    issuer = ec.generate_private_key(ec.SECP256R1())
    issuer_pem = directory / "issuer.pem"
    issuer_pem.write_bytes(issuer.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    text = f"""\
state_dir = "{directory / 'state'}"

[server]
listen = "127.0.0.1:{port}"
tls_cert = "{tls.cert}"
tls_key = "{tls.key}"

[logging]
format = "json"
level = "{log_level}"

{''.join(t.toml() for t in tokens)}
[hem]
eid = "{eid}"
token = "{hem_token}"
[[hem.users]]
name = "bench"
pubkey = "{base64.b64encode(login_public(passphrase, eid)).decode()}"
role = "U"

[vault]
[[vault.issuers]]
name = "bench"
keys = "{issuer_pem}"
{extra}
"""
    config = directory / "gateway.toml"
    config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({t.pin_env: t.pin for t in tokens})
    return GatewaySetup(directory, config, port, tls.ca_cert, passphrase, eid, issuer, env)


class GatewayProcess:
    """``gateway serve --config ... --workers N`` as a child; its log goes to a file."""

    def __init__(self, setup: GatewaySetup, workers: int) -> None:
        self.setup = setup
        self.workers = workers
        self.log_path = setup.directory / f"serve-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(setup.config), "--workers", str(workers)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=setup.env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"the gateway did not start; log:\n{self.log_tail()}") from None
            if line is None:
                raise RuntimeError(f"the gateway exited ({self.proc.wait()}); log:\n{self.log_tail()}")
            if line.startswith("pkcs11-gateway: serving"):
                return

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def worker_pids(self) -> list[int]:
        """The supervisor's children (the workers), by pid."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return sorted(int(p) for p in children.read_text().split())
        except OSError:
            return []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
