"""Driving the raw python-pkcs11 worker process (``bench.raw``) from the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.timing import Sample
from bench.tokens import BenchToken

REPO = Path(__file__).resolve().parent.parent


class RawError(RuntimeError):
    """The raw worker failed to start or to run a command."""


class RawWorker:
    """One long-lived raw process per token: it opens its session once, like a real application."""

    def __init__(self, token: BenchToken) -> None:
        self.token = token
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.raw", json.dumps(token.raw_config())],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise RawError(f"raw worker for {token.settings.name}: {hello.get('error', hello)}")

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RawError(f"raw worker for {self.token.settings.name} exited (code {self._proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RawError(f"raw worker for {self.token.settings.name}, {op}: {answer['error']}")
        result: dict[str, Any] = answer["ok"]
        return result

    def sample(self, op: str, **args: Any) -> Sample:
        return Sample.from_dict(self.call(op, **args))

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
