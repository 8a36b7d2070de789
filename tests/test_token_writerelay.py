"""One process per SoftHSM2 token makes the object changes (gateway/token/writerelay.py).

What must hold: a process that is not the writer sends its object changes to the writer and
gets the writer's result, or its error with class and details; what the writer made is the
key asked for (checked in software through the key in the token); a writer that dies is
replaced at the next change; a writer that dies during a call made the change or not, and
the caller finds out which instead of failing or making it twice; derives into session
objects stay in their process; nothing but the adapter's own types crosses the socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import NotFound, TokenUnavailable, Unsupported
from gateway.token import Curve, HashAlg, SecretSpec, SecretType, Token, Usage
from gateway.token import token as token_module
from gateway.token import writerelay
from gateway.token.constants import CKO
from gateway.token.types import KeyClass, KeyInfo
from tests.test_token_primitives import gcm_roundtrip, software_peer, software_z
from tests.tokens import SOFTHSM_MODULE, SOFTHSM_PIN

REPO = Path(__file__).resolve().parent.parent

# Another gateway process: the adapter in a process of its own, making its changes through Token.run.
_OTHER = """
import asyncio, os, sys
from gateway.errors import GatewayError
from gateway.token import SecretSpec, SecretType, Token, TokenSettings
token = Token(TokenSettings(name="other", module=sys.argv[1], label="writerelay", pin=os.environ["PIN"],
                            environment={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}))
base, peer, out = (bytes.fromhex(a) for a in sys.argv[2:5])

async def main() -> None:
    if peer:
        await token.run(token.ecdh_derive, base, SecretSpec(out, "relayed", SecretType.AES, 32), peer=peer)
        print("derived")
    try:
        await token.run(token.destroy, out if not peer else os.urandom(16))
    except GatewayError as exc:
        print("error", type(exc).__name__, getattr(exc, "mechanism", "-"), exc.message)
    try:
        await token.run(token.hkdf_derive, base, SecretSpec(os.urandom(16), "x", SecretType.AES, 32), salt=None, info=b"")
    except GatewayError as exc:
        print("error", type(exc).__name__, getattr(exc, "mechanism", "-"), exc.message)
    print("relayed", token._relay.relayed, "leading", token._relay.leading())

asyncio.run(main())
token.close()
"""

# A writer that makes the first change it is sent and dies before answering (or, with
# "wait", one that serves until it is killed).
_WRITER = """
import os, sys, time
from gateway.token import Token, TokenSettings
token = Token(TokenSettings(name="writer", module=sys.argv[1], label="writerelay", pin=os.environ["PIN"],
                            environment={"SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}))
relay = token._relay
if sys.argv[2] == "die":
    def made_then_dead(name, args, kwargs):
        token._serve_relayed(name, args, kwargs)
        os._exit(0)
    relay.handler = made_then_dead
if sys.argv[2] == "half":
    # What SoftHSM2's first write of a new secret leaves (the object, no check value yet), then dead.
    from ctypes import byref, c_ulong
    from gateway.token.cki import Template
    from gateway.token.constants import CKA, CKO
    def half_then_dead(name, args, kwargs):
        spec = args[0]
        tpl = Template({CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: 0x1F, CKA.TOKEN: True, CKA.PRIVATE: True,
                        CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.ID: spec.kid, CKA.LABEL: spec.label,
                        CKA.VALUE: os.urandom(32), CKA.CHECK_VALUE: b""})
        out = c_ulong()
        token._call(lambda s: token.module.fn("C_CreateObject", s.handle, tpl.pointer, tpl.count, byref(out)))
        os._exit(0)
    relay.handler = half_then_dead
assert relay.leading()
print("leading", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def hsm(softhsm_settings) -> Iterator[Token]:  # type: ignore[no-untyped-def]
    token = Token(softhsm_settings("writerelay"))
    yield token
    token.close()


def _env(hsm: Token) -> dict[str, str]:
    return {**os.environ, "SOFTHSM2_CONF": hsm.settings.environment["SOFTHSM2_CONF"], "PIN": SOFTHSM_PIN}


def _run(hsm: Token, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(hsm.run(fn, *args, **kwargs))


def _base(hsm: Token) -> tuple[bytes, bytes, bytes]:
    base = os.urandom(16)
    info = hsm.generate_keypair(base, "base", Curve.P256, Usage(derive=True))
    priv, forms = software_peer(Curve.P256)
    assert info.public_key is not None
    return base, forms["uncompressed"], software_z(Curve.P256, priv, info.public_key)


def _writer(hsm: Token, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, SOFTHSM_MODULE, mode], cwd=REPO, env=_env(hsm),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
    return proc


def test_another_process_sends_its_changes_to_the_writer_and_gets_its_errors(hsm: Token) -> None:
    assert hsm._relay is not None
    assert hsm._relay.leading()  # this process writes
    base, peer, z = _base(hsm)
    out = os.urandom(16)
    served = hsm._relay.served
    done = subprocess.run([sys.executable, "-c", _OTHER, SOFTHSM_MODULE, base.hex(), peer.hex(), out.hex()],
                          cwd=REPO, env=_env(hsm), check=True, timeout=60, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "derived"
    # The writer's errors arrive as they are: the class, its details and its message.
    assert lines[1].startswith("error NotFound - no key with kid"), lines
    assert lines[2].startswith("error Unsupported CKM_HKDF_DERIVE "), lines  # SoftHSM2 2.6 has no HKDF
    assert lines[3] == "relayed 3 leading False"
    assert hsm._relay.served == served + 3
    # What the writer made is the key asked for: ECDH of the base key with the peer (CKD_NULL keeps
    # the last bytes of Z), stored, sensitive, usable here.
    info = hsm.get_key(out)
    assert (info.key_class, info.secret_type, info.length, info.sensitive, info.extractable) == (
        KeyClass.SECRET, SecretType.AES, 32, True, False)
    gcm_roundtrip(hsm, out, z[-32:])
    # A destroy sent from elsewhere removes the key for everyone.
    subprocess.run([sys.executable, "-c", _OTHER, SOFTHSM_MODULE, base.hex(), "", out.hex()],
                   cwd=REPO, env=_env(hsm), check=True, timeout=60, capture_output=True, text=True)
    with pytest.raises(NotFound):
        hsm.get_key(out)
    hsm.destroy(base)


def test_a_writer_that_died_is_replaced_at_the_next_change(hsm: Token, softhsm_settings) -> None:  # type: ignore[no-untyped-def]
    hsm._relay.close()  # type: ignore[union-attr]  # this process steps back from writing
    other = Token(softhsm_settings("writerelay", name="follower"))
    writer = _writer(hsm, "wait")
    try:
        assert other._relay is not None and not other._relay.leading()
        kid = os.urandom(16)
        _run(other, other.generate_secret, SecretSpec(kid, "first", SecretType.AES, 32))
        assert other._relay.relayed == 1
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        second = os.urandom(16)
        _run(other, other.generate_secret, SecretSpec(second, "second", SecretType.AES, 32))
        assert other._relay.leading() and other._relay.relayed == 1  # made here: this process writes now
        for made in (kid, second):
            assert other.get_key(made).secret_type is SecretType.AES
            other.destroy(made)
    finally:
        writer.kill()
        writer.wait()
        other.close()
        hsm._relay = writerelay.WriterRelay(hsm._relay.lock_path.with_suffix(""), hsm._serve_relayed)  # type: ignore[union-attr]


def test_a_writer_that_dies_during_a_call_leaves_the_caller_its_result(hsm: Token, softhsm_settings) -> None:  # type: ignore[no-untyped-def]
    hsm._relay.close()  # type: ignore[union-attr]
    other = Token(softhsm_settings("writerelay", name="follower"))
    writer = _writer(hsm, "die")
    try:
        base, peer, z = _base(other)
        out = os.urandom(16)
        info = _run(other, other.ecdh_derive, base, SecretSpec(out, "lost", SecretType.AES, 32), peer=peer)
        writer.wait(timeout=30)
        assert other.counters["writer_lost"] == 1
        assert info.kid == out and info.secret_type is SecretType.AES
        # Made once, by the writer that died: not made again.
        assert [k.kid for k in other.list_keys()].count(out) == 1
        gcm_roundtrip(other, out, z[-32:])
        other.destroy(out)
        other.destroy(base)
    finally:
        writer.kill()
        writer.wait()
        other.close()
        hsm._relay = writerelay.WriterRelay(hsm._relay.lock_path.with_suffix(""), hsm._serve_relayed)  # type: ignore[union-attr]


def test_a_writer_that_dies_half_way_through_a_new_secret_fails_the_call_and_its_kid_is_swept(
        hsm: Token, softhsm_settings) -> None:  # type: ignore[no-untyped-def]
    """An object under the kid without a check value is not the key asked for: 503, swept later."""
    hsm._relay.close()  # type: ignore[union-attr]
    other = Token(softhsm_settings("writerelay", name="follower"))
    writer = _writer(hsm, "half")
    try:
        kid = os.urandom(16)
        pending = other.leftovers.pending
        with pytest.raises(TokenUnavailable, match="died while making"):
            _run(other, other.generate_secret, SecretSpec(kid, "half", SecretType.AES, 32, Usage(encrypt=True)))
        writer.wait(timeout=30)
        assert other.counters["writer_lost"] == 1
        assert other.leftovers.pending == pending + 1
        assert other._call(other._left_by_writer(os.urandom(16), CKO.SECRET_KEY)) == (None, True)  # nothing: not made
    finally:
        writer.kill()
        writer.wait()
        other.close()
        hsm._relay = writerelay.WriterRelay(hsm._relay.lock_path.with_suffix(""), hsm._serve_relayed)  # type: ignore[union-attr]


def test_a_key_pair_counts_as_made_only_with_both_halves_whole(hsm: Token) -> None:
    """What a caller finds under the kid of a generate_keypair its writer died in: a public key
    alone (the writer was killed between the two halves) is not the pair (503 and swept, as a
    secret without its check value); a whole pair is taken as made."""
    kid = os.urandom(16)
    assert hsm._call(hsm._left_by_writer(kid, CKO.PRIVATE_KEY)) == (None, True)  # nothing: not made
    _, forms = software_peer(Curve.P256)
    hsm.import_public_key(kid, "half pair", Curve.P256, forms["uncompressed"])
    try:
        assert hsm._call(hsm._left_by_writer(kid, CKO.PRIVATE_KEY)) == (None, False)
        found, whole = hsm._call(hsm._left_by_writer(kid, CKO.PUBLIC_KEY))  # as an imported public key: made
        assert whole and found is not None and found.kid == kid
    finally:
        hsm.destroy(kid)
    pair = os.urandom(16)
    hsm.generate_keypair(pair, "pair", Curve.P256, Usage(derive=True))
    try:
        found, whole = hsm._call(hsm._left_by_writer(pair, CKO.PRIVATE_KEY))
        assert whole and found is not None and found.kid == pair and found.key_class is KeyClass.PRIVATE
    finally:
        hsm.destroy(pair)


def test_derives_into_session_objects_stay_in_their_process(hsm: Token) -> None:
    session_spec = SecretSpec(b"k", "s", SecretType.AES, 32, token=False)
    stored_spec = SecretSpec(b"k", "s", SecretType.AES, 32)
    assert not hsm._changes_token_objects("ecdh_derive", (b"base", session_spec), {"peer": b"p"})
    assert not hsm._changes_token_objects("hkdf_derive", (b"base",), {"out": session_spec, "salt": None, "info": b""})
    assert hsm._changes_token_objects("ecdh_derive", (b"base", stored_spec), {"peer": b"p"})
    assert hsm._changes_token_objects("destroy", (b"kid",), {})


def test_only_the_adapters_types_cross_and_only_to_the_same_user(hsm: Token) -> None:
    info = KeyInfo(kid=b"k", label="l", key_class=KeyClass.PRIVATE, curve=Curve.P256, usage=Usage(derive=True))
    call = ("hkdf_derive", (b"k", SecretSpec(b"o", "l", SecretType.AES, 32)), {"hash_alg": HashAlg.SHA256})
    assert writerelay.loads(writerelay.dumps(info)) == info
    assert writerelay.loads(writerelay.dumps(call)) == call
    with pytest.raises(pickle.UnpicklingError):
        writerelay.loads(pickle.dumps(os.system))
    error = writerelay.decode_error(*writerelay.encode_error(Unsupported("no HKDF", "CKM_HKDF_DERIVE")))
    assert isinstance(error, Unsupported) and error.mechanism == "CKM_HKDF_DERIVE" and error.message == "no HKDF"
    relay = hsm._relay
    assert relay is not None and relay.leading()
    assert stat.S_IMODE(relay.socket_path.stat().st_mode) == 0o600
    # A request naming anything else is refused, and the writer goes on serving.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(relay.socket_path))
        writerelay._send(sock, pickle.dumps(("destroy", (os.system,), {})))
        frame = writerelay._recv(sock)
        assert frame is not None
        status, name, message, _ = writerelay.loads(frame)
        assert (status, name) == ("err", "InvalidInput") and "posix.system" in message
        writerelay._send(sock, writerelay.dumps(("random", (8,), {})))  # not an object change
        frame = writerelay._recv(sock)
        assert frame is not None and writerelay.loads(frame)[1] == "InvalidInput"


def test_a_process_that_cannot_use_the_shared_files_makes_its_own_changes(hsm: Token, tmp_path: Path,
                                                                          softhsm_settings) -> None:  # type: ignore[no-untyped-def]
    relay = writerelay.WriterRelay(tmp_path / "no-such-folder" / "x.writer", hsm._serve_relayed)
    assert relay.leading() and not relay.is_writer  # writes itself, serves nobody
    relay.close()
    # And the configuration can turn the relay off.
    own = Token(dataclasses.replace(softhsm_settings("writerelay", name="own"), object_writes="every-process"))
    try:
        assert own.relay is None
    finally:
        own.close()


def test_a_writer_that_stops_answers_the_call_it_is_running_first(hsm: Token) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started.set()
        release.wait(10)
        return "done"

    relay = writerelay.WriterRelay(hsm._relay.lock_path.parent / f"slow-{os.getpid()}.writer", slow)  # type: ignore[union-attr]
    try:
        assert relay.leading()
        caller = writerelay.WriterRelay(relay.lock_path.with_suffix(""), slow)  # calls only, never leads
        answers: list[Any] = []
        thread = threading.Thread(target=lambda: answers.append(caller.call("destroy", (b"k",), {})))
        thread.start()
        assert started.wait(10)
        closing = threading.Thread(target=relay.close)
        closing.start()
        time.sleep(0.2)
        assert closing.is_alive()  # waits for the running call
        release.set()
        closing.join(10)
        thread.join(10)
        assert answers == ["done"]
        assert not relay.socket_path.exists()
        caller.close()
    finally:
        release.set()
        relay.close()


def test_a_writer_that_does_not_answer_fails_the_call_and_its_kid_is_swept(hsm: Token, softhsm_settings,  # type: ignore[no-untyped-def]
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writerelay, "CALL_SECONDS", 0.3)
    monkeypatch.setattr(token_module, "_WRITER_WAIT_SECONDS", 0.5)
    release = threading.Event()
    wedged = writerelay.WriterRelay(hsm._relay.lock_path.parent / f"wedged-{os.getpid()}.writer",  # type: ignore[union-attr]
                                    lambda name, args, kwargs: release.wait(10))
    other = Token(softhsm_settings("writerelay", name="follower"))
    try:
        assert wedged.leading()
        other._relay.close()  # type: ignore[union-attr]
        other._relay = writerelay.WriterRelay(wedged.lock_path.with_suffix(""), other._serve_relayed)
        kid = os.urandom(16)
        pending = other.leftovers.pending
        with pytest.raises(TokenUnavailable, match="does not answer"):
            _run(other, other.generate_secret, SecretSpec(kid, "wedged", SecretType.AES, 32))
        assert other.counters["writer_lost"] >= 1
        assert other.leftovers.pending == pending + 1  # swept later, should the writer still make it
    finally:
        release.set()
        wedged.close()
        other.close()
