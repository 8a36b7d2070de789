"""The bare HTTPS server: the least a Python service can do per ECDH request, as a baseline.

``python -m bench.gw.bare`` serves one route, ``POST /api/crypto/ecdh`` with the
HEM body ``{"kid", "pubkey"}``, in processes sharing the port (``SO_REUSEPORT``)
as the gateway's workers do: aiohttp over TLS with the same certificate, JSON
in and out, and the same adapter call on the token's worker threads
(``Token.ecdh_secret`` through ``Token.run``), each process kept to one CPU
where the gateway's workers are (``server.cpu_affinity = "auto"``).  Nothing
else: no bearer check, no audit record, no access log, no metrics, no
middlewares.

Measured in the same round as the raw loop and the gateway, it splits the
gateway's gap to the raw loop into what HTTPS and threads in Python cost on this
machine (bare / raw) and what the gateway's own per-request work costs (gateway
/ bare).  It is a baseline for the benchmark only, never a way to serve.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.server import worker_cpus

READY_SECONDS = 30.0


def _app(token: Any) -> web.Application:
    async def ecdh(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            kid, peer = bytes.fromhex(body["kid"]), base64.b64decode(body["pubkey"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return web.json_response({"message": "want {kid, pubkey}"}, status=400)
        secret = await token.run(token.ecdh_secret, kid, peer=peer)
        return web.json_response({"ecdh": base64.b64encode(secret).decode()})

    app = web.Application()
    app.router.add_post("/api/crypto/ecdh", ecdh)
    return app


def _serve(args: argparse.Namespace) -> None:
    from gateway.token import Token
    from gateway.token.lanes import keep_to_cpus
    from gateway.token.settings import TokenSettings

    if args.cpu is not None:
        keep_to_cpus({args.cpu})  # as a placed gateway worker does (gateway/server.py, run_worker)
    settings = TokenSettings(name="bare", module=args.module, label=args.label, pin=os.environ[args.pin_env],
                             environment=dict(e.split("=", 1) for e in args.env), sessions=args.sessions)
    token = Token(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    try:
        web.run_app(_app(token), host="127.0.0.1", port=args.port, ssl_context=context, reuse_port=True,
                    access_log=None, print=None, handle_signals=True)
    finally:
        token.close()


def _cpu_args(cpus: set[int] | None) -> list[str]:
    return [] if cpus is None else ["--cpu", str(min(cpus))]


class BareServer:
    """``workers`` bare server processes on ``port``; started ready, stopped with SIGTERM."""

    def __init__(self, *, port: int, cert: Path, key: Path, module: str, label: str, pin: str, sessions: int,
                 environment: dict[str, str], workers: int, log_path: Path) -> None:
        env = {**os.environ, "BENCH_BARE_PIN": pin}
        args = [sys.executable, "-m", "bench.gw.bare", "--port", str(port), "--cert", str(cert), "--key", str(key),
                "--module", module, "--label", label, "--pin-env", "BENCH_BARE_PIN", "--sessions", str(sessions),
                *(x for k, v in environment.items() for x in ("--env", f"{k}={v}"))]
        repo = Path(__file__).resolve().parents[2]
        self.port = port
        self.log_path = log_path
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        with log_path.open("ab") as log:
            self.procs = [subprocess.Popen([*args, *_cpu_args(worker_cpus(slot, workers, allowed))], cwd=repo, env=env,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                          for slot in range(workers)]
        self._wait_ready()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _wait_ready(self) -> None:
        # Each process opens its own token sessions before it listens; wait until every one answers.
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError(f"the bare server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if self._listening() and all(self._has_listener(p.pid) for p in self.procs):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the bare server did not start")

    def _listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _has_listener(self, pid: int) -> bool:
        """Whether ``pid`` holds a listening socket (it does once its token is open)."""
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            return False
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                        listening.add(f"socket:[{fields[9]}]")
            except OSError:
                continue
        return bool(inodes & listening)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--module", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--pin-env", required=True)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE set before the module loads")
    p.add_argument("--cpu", type=int, help="keep to this CPU (what the gateway's supervisor picks for a worker)")
    _serve(p.parse_args(argv))


if __name__ == "__main__":
    main()
