"""A fresh view of the token: a short-lived child process that initialises the
module anew, logs in, does one job and exits.

A long-running process can hold a stale picture of a module that keeps its
objects in files.  SoftHSM2 2.6 caches the token's object list per process and
re-reads the token folder only when the token's generation number (a counter
every process bumps when it creates or destroys an object) differs from the
one it last saw.  But a process that creates or destroys an object itself
takes the counter's new value as seen, including increments other processes
made since it last looked: objects they created in between stay invisible to
it until some other process changes the counter again.  A fresh process sees
the token as it is, and by creating and destroying one small object of its
own it bumps the counter, so every process reads the folder again.

Jobs (``op`` in the request, JSON on stdin; the answer is JSON on stdout):

* ``sweep``: destroy every object carrying one of ``kids`` (failed creations, see
  leftovers.py);
* ``nudge``: bump the token's counter, so the serving process reads the token
  folder again before it says an object is not there (staleview.py).

The PIN travels on stdin, never on the command line or in the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ctypes import byref, c_ulong
from typing import Any, Final

from .settings import TokenSettings

NUDGE_APPLICATION: Final = b"gateway-nudge"  # the nudge's object, never listed with the gateway's own
CHILD_TIMEOUT: Final = 120.0  # initialising the module makes SoftHSM2 read every object file

def ask(settings: TokenSettings, op: str, **job: Any) -> dict[str, Any]:
    """Run one job in a child process; raises RuntimeError with the child's last words."""
    request = {
        "module": settings.module, "label": settings.label, "serial": settings.serial, "pin": settings.pin,
        "init_args": settings.init_args, "environment": settings.environment, "op": op, **job,
    }
    env = {**os.environ, **settings.environment}
    proc = subprocess.run([sys.executable, "-m", "gateway.token"], input=json.dumps(request),
                          capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


# --------------------------------------------------------------------------- the child process


class _Child:
    """The child's single session on a freshly initialised module."""

    def __init__(self, request: dict[str, Any]) -> None:
        from .cki import CKRError
        from .constants import CKF_RW_SESSION, CKF_SERIAL_SESSION, CKR, CKU_USER
        from .module import Module

        self.module = Module(request["module"], request["init_args"], request["environment"])
        slot, _ = self.module.find_slot(request["label"], request["serial"])
        handle = c_ulong()
        self.module.fn("C_OpenSession", slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, None, None, byref(handle))
        self.session = handle.value
        if request["pin"] is not None:
            pin = request["pin"].encode()
            rv = self.module.fn.raw("C_Login")(self.session, CKU_USER, pin, len(pin))
            if rv not in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN):
                raise CKRError(rv, "C_Login")

    def close(self) -> None:
        self.module.fn.raw("C_Logout")(self.session)
        self.module.fn.raw("C_CloseSession")(self.session)
        self.module.fn.raw("C_Finalize")(None)

    def find(self, attrs: dict[int, Any]) -> list[int]:
        from .cki import Template

        tpl = Template(attrs)
        fn = self.module.fn
        fn("C_FindObjectsInit", self.session, tpl.pointer, tpl.count)
        found: list[int] = []
        try:
            batch = (c_ulong * 256)()
            count = c_ulong()
            while True:
                fn("C_FindObjects", self.session, batch, 256, byref(count))
                found.extend(batch[: count.value])
                if count.value < 256:
                    break
        finally:
            fn.raw("C_FindObjectsFinal")(self.session)
        return found

    def nudge(self) -> bool:
        """Create and destroy a small token object: other processes re-read the token."""
        from .cki import Template
        from .constants import CKA, CKO, CKR

        tpl = Template({CKA.CLASS: CKO.DATA, CKA.TOKEN: True, CKA.PRIVATE: True,
                        CKA.APPLICATION: NUDGE_APPLICATION, CKA.LABEL: "nudge", CKA.VALUE: b"\0"})
        handle = c_ulong()
        if self.module.fn.raw("C_CreateObject")(self.session, tpl.pointer, tpl.count, byref(handle)) != CKR.OK:
            return False
        return self.module.fn.raw("C_DestroyObject")(self.session, handle.value) == CKR.OK

    def destroy(self, handle: int) -> bool:
        from .constants import CKR

        return self.module.fn.raw("C_DestroyObject")(self.session, handle) in (CKR.OK, CKR.OBJECT_HANDLE_INVALID)


def _sweep(child: _Child, request: dict[str, Any]) -> dict[str, Any]:
    from .constants import CKA

    out: dict[str, list[str]] = {"absent": [], "destroyed": [], "failed": []}
    for kid_hex in request["kids"]:
        handles = child.find({CKA.TOKEN: True, CKA.ID: bytes.fromhex(kid_hex)})
        if not handles:
            out["absent"].append(kid_hex)
        else:
            ok = all([child.destroy(h) for h in handles])
            out["destroyed" if ok else "failed"].append(kid_hex)
    return out


def _nudge(child: _Child, request: dict[str, Any]) -> dict[str, Any]:
    return {"nudged": child.nudge()}


JOBS: Final = {"sweep": _sweep, "nudge": _nudge}


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        child = _Child(request)
        try:
            answer = JOBS[request["op"]](child, request)
        finally:
            child.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides what to do
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0
