"""Several processes starting at once on one token settle on ONE system key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gateway.core.system_keys import SystemKeyLabel, find_system_key


def test_processes_starting_together_share_one_key(softhsm_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = softhsm_settings("spare1")
    start_at = time.time() + 2.0
    script = textwrap.dedent(f"""
        import time, sys
        from pathlib import Path
        from gateway.token import Token, TokenSettings, SecretSpec, SecretType, Usage
        from gateway.core.system_keys import ensure_system_key
        token = Token(TokenSettings(name="t", module={settings.module!r}, label={settings.label!r},
                                    pin={settings.pin!r}, environment={settings.environment!r}))
        make = lambda kid, label: token.generate_secret(SecretSpec(kid, label, SecretType.GENERIC, 32, Usage(sign=True)))
        time.sleep(max(0.0, {start_at!r} - time.time()))
        info = ensure_system_key(token, "race-test", "s", make, lock_dir=Path({str(tmp_path)!r}))
        print(info.kid.hex())
        token.close()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    kids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(kids) == 1, f"processes chose different keys: {kids}"

    from gateway.token import Token

    token = Token(settings)
    try:
        committed = [i for i in token.list_keys() if (m := SystemKeyLabel.decode(i.label)) and m.role == "race-test"]
        assert len(committed) == 1
        found = find_system_key(token, "race-test", "s")
        assert found is not None and found.kid.hex() == kids.pop()
    finally:
        token.close()
