"""Running the gateway: one server process, or a supervisor with N worker processes on one port.

One process (``gateway serve``): open the tokens, listen (HTTPS when
configured, plus the optional plain-HTTP probe listener), and on SIGTERM or
SIGINT stop accepting, let in-flight requests finish within
``server.shutdown_timeout``, then close the token sessions and log out.

Several workers (``gateway serve --workers N``): this process becomes a
supervisor that never loads a PKCS#11 module.  It starts N fresh Python
processes (``fork`` + ``exec``, so each initialises its own modules - a
process with a module loaded is never forked) that all bind the same port
with ``SO_REUSEPORT``; the kernel spreads connections over them.  The first
worker starts alone and the others once it is ready, so the token objects
the deployment shares (HEM and audit keys) are made by one process.  The
supervisor forwards SIGTERM/SIGINT, restarts a worker that dies after it was
ready, and gives up when one fails to start (its exit code becomes ours).
Workers share their metrics through ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gateway.config import Config
from gateway.core.metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
READY_MESSAGE: Final = b"ready\n"
GAUGE_REFRESH_SECONDS: Final = 2.0
# A worker that keeps dying is a deployment problem, not something to retry forever.
MAX_RESTARTS: Final = 5
RESTART_WINDOW_SECONDS: Final = 60.0
# Slack for a worker to close its tokens after its in-flight requests are done.
STOP_MARGIN_SECONDS: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1
WORKER_CPU_ENV: Final = "GATEWAY_WORKER_CPU"  # from the supervisor: the CPU a worker keeps to (worker_cpus)


def banner(config: Config, workers: int) -> str:
    """What ``gateway serve`` prints once it is ready: where it listens and a curl line to try."""
    from gateway.tls import curl_hint

    scheme = "https" if config.server.tls else "http"
    lines = [f"pkcs11-gateway: serving {scheme}://{config.server.listen} "
             f"({workers} worker{'s' if workers != 1 else ''}, tokens: {', '.join(config.token_names)})"]
    if config.server.plain_listen:
        lines.append(f"  plain HTTP probes and metrics on http://{config.server.plain_listen}")
    hint = curl_hint(config)
    if hint:
        lines.append(f"  try: {hint}")
    elif scheme == "http":
        lines.append(f"  try: curl http://{config.server.listen}/readyz")
    if config.vault.dev_issuer_key is not None:
        lines.append(f"  Vault: {vault_hint(config, scheme)}")
    lines.append(f"  API reference: {scheme}://{config.server.listen}/docs")
    return "\n".join(lines)


def vault_hint(config: Config, scheme: str) -> str:
    """A curl line listing the caller's vaults, with a JWT from `gateway jwt issue` (the dev issuer)."""
    import shlex
    import uuid
    from pathlib import Path

    from gateway import tls

    cacert = ""
    if tls.uses_dev_tls(config):
        cacert = f"--cacert {shlex.quote(str(tls.dev_tls_dir(config) / tls.CA_CERT_NAME))} "
    command = shlex.quote(str(Path(sys.executable).with_name("gateway")))
    jwt = f"$({command} jwt issue --config {shlex.quote(str(config.path))} --sub application:{uuid.uuid4()})"
    return f'curl {cacert}-H "Authorization: bearer {jwt}" {scheme}://{config.server.listen}/api/v1/vaults'


# --------------------------------------------------------------------------- one server process


async def _refresh_gauges(app_tokens: Callable[[], object]) -> None:
    """With several workers, keep this worker's pool gauges fresh for whichever worker is scraped,
    and write the counts and timings it holds (metrics._Held) at least every FLUSH_SECONDS."""
    from gateway.core import metrics

    refreshed = 0.0
    while True:
        now = time.monotonic()
        if now - refreshed >= GAUGE_REFRESH_SECONDS:
            tokens = app_tokens()
            if tokens is not None:
                metrics.update_token_gauges(tokens)  # type: ignore[arg-type]
            refreshed = now
        metrics.flush()
        await asyncio.sleep(metrics.FLUSH_SECONDS)


async def _serve(config: Config, reuse_port: bool, on_ready: Callable[[], None]) -> None:
    from aiohttp import web

    from gateway.core import metrics
    from gateway.http.app import create_app, create_probe_app, ssl_context
    from gateway.http.keys import TOKENS_KEY
    from gateway.http.middleware import GatewayRunner

    server = config.server
    context = ssl_context(server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    app = create_app(config)
    runners: list[web.AppRunner] = []
    runner = GatewayRunner(app, handle_signals=False, access_log=None, shutdown_timeout=server.shutdown_timeout)
    await runner.setup()  # opens the tokens
    runners.append(runner)
    refresher: asyncio.Task[None] | None = None
    try:
        if stop.is_set():
            return
        await web.TCPSite(runner, server.host, server.port, ssl_context=context,
                          reuse_port=reuse_port or None).start()
        if server.plain_host is not None:
            probe = GatewayRunner(create_probe_app(config, app), handle_signals=False, access_log=None,
                                  shutdown_timeout=server.shutdown_timeout)
            await probe.setup()
            runners.insert(0, probe)  # stopped first: it shares the main app's tokens
            await web.TCPSite(probe, server.plain_host, server.plain_port, reuse_port=reuse_port or None).start()
        if metrics.multiprocess_dir() is not None:
            refresher = asyncio.create_task(_refresh_gauges(lambda: app.get(TOKENS_KEY)))
        log.info("listening on %s://%s", "https" if context else "http", server.listen,
                 extra={"fields": {"plain_listen": server.plain_listen, "tokens": config.token_names}})
        on_ready()
        await stop.wait()
        log.info("shutting down: not accepting new connections; in-flight requests have %gs",
                 server.shutdown_timeout)
    finally:
        if refresher is not None:
            refresher.cancel()
        for r in runners:
            # Stops listening, waits for in-flight requests up to shutdown_timeout, then runs the
            # app's cleanup (closing the token sessions and logging out).
            await r.cleanup()
        metrics.flush()  # what this worker still held, before it exits
        log.info("stopped")


def _is_close_timeout(exc: BaseException) -> bool:
    from aiohttp.web_app import CleanupError

    from gateway.http.app import TokenCloseTimeout

    if isinstance(exc, TokenCloseTimeout):
        return True
    if isinstance(exc, CleanupError):
        return any(_is_close_timeout(e) for e in exc.exceptions)
    return False


def run_worker(config: Config, *, reuse_port: bool = False, on_ready: Callable[[], None] = lambda: None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code.  Blocks."""
    cpu = os.environ.pop(WORKER_CPU_ENV, "")
    if cpu:
        from gateway.token.lanes import keep_to_cpus

        keep_to_cpus({int(cpu)})  # before any token or audit thread starts: they inherit it
    try:
        asyncio.run(_serve(config, reuse_port, on_ready))
    except Exception as exc:
        if not _is_close_timeout(exc):
            raise
        # A thread is stuck inside a token; waiting for it would hang the exit forever.
        log.error("exiting without a clean logout: %s", exc)
        logging.shutdown()
        os._exit(EXIT_FAILURE)
    return EXIT_OK


def ready_notifier(fd: int) -> Callable[[], None]:
    """``on_ready`` for a worker: tell the supervisor through the inherited pipe ``fd``."""

    def notify() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, READY_MESSAGE)
            os.close(fd)

    return notify


# --------------------------------------------------------------------------- supervisor


def _assert_no_module_loaded() -> None:
    """Forking after a PKCS#11 module was initialised is undefined behaviour; refuse."""
    module = sys.modules.get("gateway.token.module")
    if module is not None and module.loaded_modules():
        raise RuntimeError("a PKCS#11 module is loaded in the supervisor; workers must start from a clean process")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, instead of living on orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def worker_cpus(slot: int, workers: int, allowed: set[int]) -> set[int] | None:
    """The CPU worker ``slot`` keeps to under ``server.cpu_affinity = "auto"``, or None (anywhere).

    Why: a worker's event loop hands every token call to one of its token
    threads and gets the answer back, and its audit thread appends between
    them.  Each hand-over wakes a sleeping thread; when the kernel runs that
    thread on another CPU, the wake-up is an inter-processor interrupt (a VM
    exit on a virtual machine) and the data moves between caches.  Kept on
    one CPU, the threads of a worker take turns there.  Measured on
    ``gw-hem-ecdh`` (c=16, two workers, two CPUs; per thread from /proc, 5 s
    windows): about 10% less CPU per request and half the token threads'
    context switches.

    Only when every CPU gets the same number of workers (workers a multiple of
    the CPUs this process may use): with fewer workers than CPUs, a worker's
    token threads are better off running beside it on an idle CPU.
    """
    cpus = sorted(allowed)
    if workers < 2 or not cpus or workers % len(cpus):
        return None
    return {cpus[slot % len(cpus)]}


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    ready_fd: int
    ready: bool = False
    buffer: bytes = b""


@dataclass
class Supervisor:
    """Starts, watches and stops the worker processes of one ``gateway serve --workers N``."""

    config: Config
    workers: int
    worker_argv: Callable[[int], list[str]]  # given the ready-pipe fd, the command of one worker
    on_ready: Callable[[], None] = lambda: None
    _running: dict[int, _Worker] = field(default_factory=dict)
    _restarts: list[float] = field(default_factory=list)
    _stopping: bool = False
    _metrics_dir: str = ""

    def _cpus(self, slot: int) -> set[int] | None:
        if self.config.server.cpu_affinity != "auto" or not hasattr(os, "sched_getaffinity"):
            return None
        return worker_cpus(slot, self.workers, os.sched_getaffinity(0))

    def _spawn(self, slot: int) -> _Worker:
        cpus = self._cpus(slot)
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                self.worker_argv(write_fd), pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                env={**os.environ, MULTIPROC_ENV: self._metrics_dir,
                     **({WORKER_CPU_ENV: str(min(cpus))} if cpus is not None else {})},
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        where = "" if cpus is None else f" on CPU {min(cpus)}"  # the worker keeps to it (run_worker)
        log.info("started worker %d (pid %d)%s", slot, proc.pid, where)
        return _Worker(slot, proc, read_fd)

    def _signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
        self._stopping = True

    def _reap(self, worker: _Worker) -> int | None:
        """Handle an exited worker; an exit code means 'give up with this code'."""
        from gateway.core.metrics import worker_exited

        code = worker.proc.returncode
        assert code is not None
        os.close(worker.ready_fd)
        del self._running[worker.slot]
        with contextlib.suppress(OSError):
            worker_exited(worker.proc.pid, self._metrics_dir)
        if self._stopping:
            return None
        if not worker.ready:
            log.error("worker %d (pid %d) failed to start (exit code %d)", worker.slot, worker.proc.pid, code)
            return code if code > 0 else EXIT_FAILURE
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_SECONDS] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            log.error("workers died %d times within %gs; giving up", len(self._restarts), RESTART_WINDOW_SECONDS)
            return EXIT_FAILURE
        log.warning("worker %d (pid %d) exited with code %d; starting a new one", worker.slot, worker.proc.pid, code)
        self._running[worker.slot] = self._spawn(worker.slot)
        return None

    def _read_ready(self, timeout: float) -> None:
        waiting = {w.ready_fd: w for w in self._running.values() if not w.ready}
        if not waiting:
            time.sleep(timeout)
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            worker = waiting[fd]
            data = os.read(fd, 64)
            worker.buffer += data
            if READY_MESSAGE in worker.buffer:
                worker.ready = True

    def _stop_all(self) -> None:
        self._stopping = True
        for worker in self._running.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + STOP_MARGIN_SECONDS
        for worker in list(self._running.values()):
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
            self._reap(worker)

    def run(self) -> int:
        """Run until a signal or a fatal worker failure; return the exit code."""
        _assert_no_module_loaded()
        self._metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        code = EXIT_OK
        announced = False
        try:
            # The first worker starts alone: it creates what the deployment keeps in the token
            # (HEM and audit keys) before the others look for it, so concurrent first starts on
            # a fresh token cannot each make their own (SoftHSM2 does not show one process's
            # brand-new objects to another reliably enough for that race).
            self._running[0] = self._spawn(0)
            while not self._stopping:
                self._read_ready(0.2)
                if len(self._running) < self.workers and self._running.get(0) is not None and self._running[0].ready:
                    for slot in range(1, self.workers):
                        if slot not in self._running:
                            self._running[slot] = self._spawn(slot)
                for worker in list(self._running.values()):
                    if worker.proc.poll() is not None:
                        failed = self._reap(worker)
                        if failed is not None:
                            code = failed
                            self._stopping = True
                            break
                if not announced and len(self._running) == self.workers and all(
                        w.ready for w in self._running.values()):
                    announced = True
                    self.on_ready()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("all workers stopped")
        return code
