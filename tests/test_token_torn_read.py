"""Opening a token rides out a token file another process is rewriting.

SoftHSM2 rewrites its token file (``token.object``: label, flags, PIN blobs) at every
C_Login, truncating it before it takes the file lock.  A process that reads it meanwhile,
as C_Initialize does, keeps what it read: with the file cut before the user PIN it answers
CKR_USER_PIN_NOT_INITIALIZED to every login until the module is initialised again.
CI saw it: four processes starting together on one token, one of them could not log in.

Here the file is cut before one of its attributes, as a reader mid-write finds it, and put
back as soon as the child's first C_Initialize has read it.  The child must open the token
all the same (by re-initialising the module).  And between our own processes the tear should
not happen at all: logins and token-info reads take turns (tokenfile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# CKA_VENDOR_DEFINED | "SI".."SM": SoftHSM2's token attributes, in the order it writes them.
_ATTRIBUTE = {"label": b"SI", "flags": b"SK", "SO PIN": b"SL", "user PIN": b"SM"}
_MARK = b"\x00\x00\x00\x00\x80\x00"  # the high bytes of each attribute's type


def _token_file(softhsm_dir: Path, label: str) -> Path:
    padded = label.encode().ljust(32)
    for path in softhsm_dir.glob("tokens/*/token.object"):
        if padded in path.read_bytes():
            return path
    raise AssertionError(f"no token.object for {label!r} under {softhsm_dir}")


@pytest.mark.parametrize("missing", list(_ATTRIBUTE))
def test_open_rides_out_a_token_file_read_mid_write(softhsm_settings, softhsm_dir: Path, missing: str) -> None:  # type: ignore[no-untyped-def]
    settings = softhsm_settings("tornread", sessions=1)
    path = _token_file(softhsm_dir, "tornread")
    whole = path.read_bytes()
    cut = whole.index(_MARK + _ATTRIBUTE[missing])
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from gateway.token import Token, TokenSettings
        from gateway.token.module import Module

        path, whole = Path({str(path)!r}), {whole!r}
        path.write_bytes(whole[:{cut}])
        first_initialize = Module.initialize

        def initialize(self):
            first_initialize(self)  # the real C_Initialize has read the cut file
            path.write_bytes(whole)
            Module.initialize = first_initialize

        Module.initialize = initialize
        try:
            token = Token(TokenSettings(name="t", module={settings.module!r}, label={settings.label!r},
                                        pin={settings.pin!r}, environment={settings.environment!r}, sessions=1))
            print(json.dumps({{"generation": token.module.generation, "keys": len(token.list_keys())}}))
            token.close()
        except Exception as exc:
            print(json.dumps({{"error": str(exc)}}))
        finally:
            if Module.initialize is initialize:  # never called: put the file back here
                path.write_bytes(whole)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in answer, f"with the token file cut before the {missing}: {answer['error']}"
    assert answer["generation"] >= 1, "the module was not initialised again"
    # The file is whole again: the login that followed rewrote it from a full read.  Its
    # leading write counter and the flags may have changed; label, serial and PINs must not.
    after = path.read_bytes()
    label, flags, pins = (whole.index(_MARK + _ATTRIBUTE[a]) for a in ("label", "flags", "SO PIN"))
    assert len(after) == len(whole)
    assert after[label:flags] == whole[label:flags] and after[pins:] == whole[pins:]


def test_logins_wait_for_the_token_file_lock(softhsm_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Our processes keep each other from reading the token file mid-write: whoever logs in
    (or reads the token's info) holds one lock per token folder (tokenfile.py)."""
    import fcntl
    import time

    from gateway.token.tokenfile import TokenFileLock

    settings = softhsm_settings("tornread", sessions=1)
    lock = TokenFileLock.for_softhsm(settings.environment)
    assert lock.path is not None
    script = textwrap.dedent(f"""
        import time
        from gateway.token import Token, TokenSettings
        token = Token(TokenSettings(name="t", module={settings.module!r}, label={settings.label!r},
                                    pin={settings.pin!r}, environment={settings.environment!r}, sessions=1))
        print(time.time())
        token.close()
    """)
    fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert child.poll() is None, "the token opened while another process held the token file lock"
        released = time.time()
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, _ = child.communicate(timeout=60)
    finally:
        os.close(fd)
    assert child.returncode == 0
    assert float(out.strip().splitlines()[-1]) >= released


def test_a_token_without_a_user_pin_says_so(tmp_path: Path) -> None:
    """Where every re-initialisation reads the same missing user PIN, the error says how to fix it."""
    import shutil

    from tests.tokens import SOFTHSM_MODULE

    if shutil.which("pkcs11-tool") is None:
        pytest.skip("pkcs11-tool (opensc) is not installed")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    # pkcs11-tool initialises a token without a user PIN unless told --init-pin
    subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--init-token", "--label", "nopin", "--so-pin", "5678"],
                   env=env, capture_output=True, timeout=60, check=True)
    script = textwrap.dedent(f"""
        from gateway.errors import TokenUnavailable
        from gateway.token import Token, TokenSettings
        try:
            Token(TokenSettings(name="nopin", module={SOFTHSM_MODULE!r}, label="nopin", pin="1234",
                                environment={{"SOFTHSM2_CONF": {str(conf)!r}}}, sessions=1))
        except TokenUnavailable as exc:
            print(type(exc).__name__, exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("TokenUnavailable "), done.stdout + done.stderr
    assert "CKR_USER_PIN_NOT_INITIALIZED" in done.stdout and "set one (C_InitPIN" in done.stdout
