"""Two processes on one SoftHSM2 token, one making keys (and deleting derived ones), the other
deriving from them as they appear and deleting what it derived: no call fails.

SoftHSM2 keeps a token in files that every process re-reads when another changed them; while
objects are being deleted it now and then answers a create or derive with CKR_GENERAL_ERROR or
CKR_TEMPLATE_INCONSISTENT that the same call does not repeat.  The adapter tries such a call
once more (creating calls first look for the kid they may have made), so callers never see it.
No timing is asserted; how often the retry was needed is reported, not required.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tokens import SOFTHSM_PIN

REPO = Path(__file__).resolve().parent.parent
PAIRS = 150


def test_makers_and_users_in_two_processes(softhsm_dir: Path) -> None:
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm_dir / "softhsm2.conf"), "GATEWAY_TEST_PIN": SOFTHSM_PIN}
    worker = [sys.executable, "-m", "tests.two_process_worker"]
    maker = subprocess.Popen([*worker, "make", "stress", str(PAIRS)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             text=True)
    user = subprocess.Popen([*worker, "use", "stress"], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert maker.stdout is not None and user.stdin is not None and user.stdout is not None
    made = None
    for line in maker.stdout:
        if line.startswith("{"):
            made = json.loads(line)
        else:
            user.stdin.write(line)
            user.stdin.flush()
    user.stdin.close()
    used = json.loads(user.stdout.read().strip().splitlines()[-1])
    assert maker.wait(timeout=300) == 0 and user.wait(timeout=300) == 0
    assert made is not None
    print(f"two processes: {made} / {used}")
    assert made["errors"] == {} and used["errors"] == {}, (made, used)
    assert made["made"] == PAIRS and used["used"] == PAIRS, (made, used)
