"""What the stress tests share: a real `gateway serve` set up for them, an async HTTPS load
driver, and the checks on the token afterwards (pkcs11-tool listing, lost keys, orphans,
key protection, secrets in what the gateway wrote).

The token is inspected from outside the gateway, with opensc's ``pkcs11-tool`` (its own
process with the run's ``SOFTHSM2_CONF``), and keys are checked usable through the API
with results verified in software: every derive uses one base key and one peer whose
private key the test holds, so each derived AES-256 key is known (recipe ``raw``: the
P-256 shared secret Z itself).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import ssl
import struct
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.hem.meta import KeyMeta
from gateway.core.issuers import thumbprint
from gateway.core.system_keys import is_system_label
from gateway.token.scangate import softhsm_shared_path
from tests.hem_helpers import EID, PASSPHRASE, ejwt, login_public
from tests.service_support import PIN, Server, ServiceSetup, make_setup
from tests.tokens import SOFTHSM_MODULE

ISSUER = "stress"
REQUEST_TIMEOUT = 120.0  # a safety net for one request under faults, not a speed requirement


# --------------------------------------------------------------------------- the gateway


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Issuer:
    """An ES256 issuer trusted by both dialects: HEM external tokens and Vault JWTs."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def pem(self, directory: Path) -> Path:
        path = directory / "stress-issuer.pem"
        path.write_bytes(self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
        return path

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iat": now, "exp": now + 3600, "jti": str(uuid.uuid4()), **claims}
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": thumbprint(self.key.public_key())})

    def hem(self, scope: str) -> str:
        """A HEM bearer token (external issuer) for ``scope`` (space-separated scopes allowed)."""
        return self.token(sub="stress-client", scope=scope)

    def vault(self, owner: str | None = None) -> str:
        return self.token(sub=owner or f"application:{uuid.uuid4()}")


def stress_config(directory: Path, *, label: str = "stress", issuer: Issuer, server: str = "") -> ServiceSetup:
    """A `gateway serve` config on a fresh SoftHSM2 token (HEM user alice, the stress issuer
    trusted by HEM and Vault, fault hooks on)."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = issuer.pem(directory)
    extra = f"""
[hem]
eid = "{EID}"
failed_login_delay_ms = 0
[[hem.users]]
name = "alice"
pubkey = "{b64(login_public(PASSPHRASE))}"
[[hem.external_issuers]]
name = "{ISSUER}"
keys = "{pem}"

[vault]
allow_secret_import = true
[[vault.issuers]]
name = "{ISSUER}"
keys = "{pem}"
"""
    return make_setup(directory, label=label, server="fault_hooks = true\n" + server, extra=extra)


def second_instance(setup: ServiceSetup, name: str) -> ServiceSetup:
    """Another config on the same token and state directory, listening elsewhere."""
    from tests.service_support import free_port

    port, plain = free_port(), free_port()
    text = setup.config.read_text()
    text = text.replace(f"127.0.0.1:{setup.port}", f"127.0.0.1:{port}").replace(
        f"127.0.0.1:{setup.plain_port}", f"127.0.0.1:{plain}")
    config = setup.directory / f"{name}.toml"
    config.write_text(text)
    return ServiceSetup(setup.directory, config, port, plain, setup.ca, setup.token_dir, dict(setup.env))


def writer_pid(setup: ServiceSetup) -> int | None:
    """The process holding the SoftHSM2 writer role of the setup's token (gateway/token/writerelay.py),
    read from the kernel's lock table: the holder of the ``.writer.lock`` flock."""
    stem = softhsm_shared_path({"SOFTHSM2_CONF": str(setup.token_dir / "softhsm2.conf")}, "")
    if stem is None:
        return None
    inodes = {p.stat().st_ino for p in stem.parent.glob(stem.name + ".*.writer.lock")}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) in inodes:
            return int(fields[4])
    return None


def supervisor_children(pid: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


# --------------------------------------------------------------------------- HTTP


class Api:
    """An aiohttp session against one gateway (HTTPS with the setup's CA), keep-alive."""

    def __init__(self, setup: ServiceSetup, limit: int = 64) -> None:
        self.setup = setup
        self.base = f"https://127.0.0.1:{setup.port}"
        self.ssl = ssl.create_default_context(cafile=str(setup.ca))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl, limit=limit),
                                             timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, bearer: str | None = None,
                   fresh: bool = False) -> tuple[int | str, Any]:
        """(status, JSON body or text); a connection that broke is ("disconnected", reason)."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if fresh:
            headers["Connection"] = "close"  # a new connection: SO_REUSEPORT picks a worker anew
        try:
            async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text) if text else None
                except ValueError:
                    return response.status, text
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
            return "disconnected", type(exc).__name__
        except asyncio.TimeoutError:
            return "timeout", None

    async def login(self, scope: str) -> str:
        status, challenge = await self.call("GET", "/api/auth/token")
        assert status == 200, (status, challenge)
        status, answer = await self.call("POST", "/api/auth/token", {"auth": ejwt(challenge, PASSPHRASE, scope, exp=0)})  # exp 0: the default 8 h
        assert status == 200, (status, answer)
        return str(answer["token"])


@dataclass
class Outcome:
    status: int | str
    kid: str | None = None


@dataclass
class Load:
    """What a load run did: every answer by status, and the kids of the successes."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def kids(self) -> list[str]:
        return [o.kid for o in self.outcomes if o.status == 200 and o.kid]

    def by_status(self) -> dict[str, int]:
        return dict(sorted(Counter(str(o.status) for o in self.outcomes).items()))

    @property
    def failures(self) -> dict[str, int]:
        return {s: n for s, n in self.by_status().items() if s != "200"}


async def run_load(total: int, concurrency: int, one: Callable[[int], Awaitable[Outcome]],
                   load: Load | None = None, more: Callable[[int], bool] | None = None) -> Load:
    """``total`` calls of ``one(i)`` with ``concurrency`` in flight (``load`` fills as answers come);
    ``more(issued)``, when given, keeps issuing calls past ``total`` while it is true."""
    load = load if load is not None else Load()
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total or (more is not None and more(issued)):
            issued += 1
            load.outcomes.append(await one(issued))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return load


# --------------------------------------------------------------------------- one base key, one peer


@dataclass
class DeriveKit:
    """A P-256 base key in the token and a software peer: every derived key's value is ``z``."""

    base: str
    peer_private: ec.EllipticCurvePrivateKey
    peer_b64: str
    z: bytes

    @classmethod
    async def make(cls, api: Api, bearer: str) -> "DeriveKit":
        status, created = await api.call("POST", "/api/keymgmt/create",
                                         {"label": "stress-base", "type": "SECP256R1", "mode": "ECDH"}, bearer)
        assert status == 200, created
        status, info = await api.call("GET", f"/api/keymgmt/get/{created['kid']}", bearer=bearer)
        assert status == 200, info
        base_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), base64.b64decode(info["pubkey"]))
        peer = ec.generate_private_key(ec.SECP256R1())
        peer_b64 = b64(peer.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.CompressedPoint))
        return cls(created["kid"], peer, peer_b64, peer.exchange(ec.ECDH(), base_public))

    def body(self, label: str = "stress-derived") -> dict[str, Any]:
        return {"kid": self.base, "label": label, "type": "AES256", "pubkey": self.peer_b64}

    def derive(self, api: Api, bearer: str) -> Callable[[int], Awaitable[Outcome]]:
        async def one(_: int) -> Outcome:
            status, answer = await api.call("POST", "/api/keymgmt/derive", self.body(), bearer)
            kid = answer.get("kid") if status == 200 and isinstance(answer, dict) else None
            return Outcome(status, kid)

        return one


async def usable_aes(api: Api, issuer: Issuer, kid: str, key: bytes) -> bool:
    """AES-GCM through the API with ``kid``, opened in software with ``key``."""
    message = os.urandom(24)
    status, sealed = await api.call("POST", "/api/crypto/cipher/encrypt",
                                    {"kid": kid, "alg": "AES256-GCM", "msg": b64(message)},
                                    issuer.hem(f"keymgmt:use:{kid}"))
    if status != 200:
        return False
    try:
        opened = AESGCM(key).decrypt(base64.b64decode(sealed["iv"]),
                                     base64.b64decode(sealed["ciphertext"]) + base64.b64decode(sealed["tag"]), None)
    except Exception:  # noqa: BLE001 - a wrong key is "not usable"
        return False
    return opened == message


async def listed_kids(api: Api, bearer: str, pages: int | None = None) -> tuple[int, set[str]]:
    """The HEM API's key count, and the kids of its pages (all of them, or ``pages`` spread over the
    list: every page costs the gateway a scan of the token, so listing 6,000 keys 15 at a time would
    take minutes)."""
    status, first = await api.call("GET", "/api/keymgmt/list/0/15", bearer=bearer)
    assert status == 200, first
    total = int(first["total"])
    offsets = list(range(0, total, 15))
    if pages is not None and len(offsets) > pages:
        step = len(offsets) / pages
        offsets = sorted({offsets[int(i * step)] for i in range(pages)} | {offsets[-1]})
    kids: set[str] = set()
    for offset in offsets:
        status, page = await api.call("GET", f"/api/keymgmt/list/{offset}/15", bearer=bearer)
        assert status == 200, page
        kids |= {entry["kid"] for entry in page["list"]}
    status, last = await api.call("GET", "/api/keymgmt/list/0/1", bearer=bearer)
    assert status == 200, last
    return int(last["total"]), kids


async def leftovers_settled(api: Api, deadline: float = 120.0) -> float:
    """Seconds until every worker reports no failed creation left to sweep from the token
    (``gateway_token_leftovers_pending``, summed over workers; each worker refreshes it every 2 s,
    so two zero readings 2.5 s apart are asked for)."""
    started = time.monotonic()
    zeros = 0
    while time.monotonic() - started < deadline:
        status, text = await api.call("GET", "/metrics", fresh=True)
        assert status == 200, text
        pending = sum(float(line.rpartition(" ")[2]) for line in str(text).splitlines()
                      if line.startswith("gateway_token_leftovers_pending{"))
        zeros = zeros + 1 if pending == 0 else 0
        if zeros >= 2:
            return time.monotonic() - started
        await asyncio.sleep(2.5)
    raise AssertionError(f"failed creations still not swept after {deadline:.0f} s")


def writer_losses(log_text: str) -> int:
    """Calls a worker sent to the writer process that died during them, from the gateway's logs."""
    return log_text.count("the writer process went away during")


def leftovers_removed(log_text: str) -> int:
    """How many leftovers of failed creations the gateway's sweeps removed, from its logs."""
    return sum(int(n) for n in re.findall(r"removed what (\d+) failed creation", log_text))


async def check_usable(api: Api, issuer: Issuer, kids: list[str], key: bytes, concurrency: int = 16) -> list[str]:
    """The kids among ``kids`` that do NOT encrypt with ``key`` through the API."""
    bad: list[str] = []
    queue = iter(kids)

    async def worker() -> None:
        for kid in queue:
            if not await usable_aes(api, issuer, kid, key):
                bad.append(kid)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bad


# --------------------------------------------------------------------------- the token from outside


@dataclass(frozen=True)
class TokenObject:
    kind: str  # "secret", "private", "public", "data"
    kid: str
    label: str
    access: frozenset[str]

    @property
    def sensitive(self) -> bool:
        return "sensitive" in self.access

    @property
    def extractable(self) -> bool:
        return "extractable" in self.access


_KINDS = {"Secret Key Object": "secret", "Private Key Object": "private", "Public Key Object": "public",
          "Data object": "data"}


def list_objects(setup: ServiceSetup, label: str = "stress") -> list[TokenObject]:
    """Every object in the token, as opensc's pkcs11-tool lists it (its own process)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(setup.token_dir / "softhsm2.conf")}
    proc = subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", label, "--login", "--pin", PIN,
                           "--list-objects"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    objects: list[TokenObject] = []
    current: dict[str, str] | None = None

    def flush() -> None:
        if current is not None:
            objects.append(TokenObject(current["kind"], current.get("ID", ""), current.get("label", ""),
                                       frozenset(a.strip() for a in current.get("Access", "").split(",") if a.strip())))

    for line in proc.stdout.splitlines():
        head = next((k for k in _KINDS if line.startswith(k)), None)
        if head is not None:
            flush()
            current = {"kind": _KINDS[head]}
        elif current is not None and ":" in line and line.startswith("  "):
            name, _, value = line.strip().partition(":")
            current.setdefault(name.strip(), value.strip())
    flush()
    return objects


CKA_LABEL, CKA_VALUE, CKA_ID = 0x03, 0x11, 0x102


def _softhsm_attributes(data: bytes) -> dict[int, bytes]:
    """The leading attributes of a SoftHSM2 object file: an 8-byte generation, then records of
    (type u64, kind u64, value) in ascending type order; reading stops at a kind that is not a
    bool (1), an unsigned long (2) or a byte string (3): label, value and id all come before."""
    attrs: dict[int, bytes] = {}
    i = 8
    while i + 16 <= len(data):
        kind_type, kind = struct.unpack(">QQ", data[i:i + 16])
        i += 16
        if kind == 1:
            attrs[kind_type], i = data[i:i + 1], i + 1
        elif kind == 2:
            attrs[kind_type], i = data[i:i + 8], i + 8
        elif kind == 3 and i + 8 <= len(data):
            (size,) = struct.unpack(">Q", data[i:i + 8])
            attrs[kind_type], i = data[i + 8:i + 8 + size], i + 8 + size
        else:
            break
    return attrs


def objects_without_id(setup: ServiceSetup) -> list[dict[str, int]]:
    """Object files in the token folder without a CKA_ID: how long their label and value are (0: none)."""
    found = []
    for path in sorted(token_folder(setup).glob("*.object")):
        if path.name == "token.object":
            continue
        attrs = _softhsm_attributes(path.read_bytes())
        if not attrs.get(CKA_ID):
            found.append({"bytes": path.stat().st_size, "label": len(attrs.get(CKA_LABEL, b"")),
                          "value": len(attrs.get(CKA_VALUE, b""))})
    return found


@dataclass
class TokenCheck:
    """The token after a run, against what the API answered."""

    objects: list[TokenObject]
    hem: dict[str, list[TokenObject]]  # kid -> objects with HEM metadata
    orphans: list[TokenObject]  # key objects with a CKA_ID but no metadata the gateway wrote, or a half pair
    incomplete: list[dict[str, int]]  # object files without CKA_ID: how long their label and value are
    unprotected: list[TokenObject]  # private/secret keys not sensitive or extractable
    lost: list[str]  # acknowledged kids missing, without metadata, or unusable

    listed_without_id: int = 0  # what pkcs11-tool lists of them (SoftHSM2 may hold some invalid)

    @property
    def incomplete_hold_nothing(self) -> bool:
        """No label and no key value (read from the files: CKA_VALUE is secret, PKCS#11 will not
        show it), and pkcs11-tool lists no object without an id beyond those files."""
        return (all(o["label"] == 0 and o["value"] == 0 for o in self.incomplete)
                and self.listed_without_id <= len(self.incomplete))

    @classmethod
    def run(cls, setup: ServiceSetup, acknowledged: dict[str, str], unusable: list[str]) -> "TokenCheck":
        """``acknowledged``: kid -> HEM type the API said it made; ``unusable``: kids that failed the use check."""
        objects = list_objects(setup)
        hem: dict[str, list[TokenObject]] = {}
        orphans: list[TokenObject] = []
        for obj in objects:
            if obj.kind == "data" or not obj.kid:
                continue  # objects without CKA_ID: objects_without_id() reads what their files hold
            meta = KeyMeta.decode(obj.label)
            if meta is not None:
                hem.setdefault(obj.kid, []).append(obj)
            elif not is_system_label(obj.label):
                orphans.append(obj)
        for kid, parts in hem.items():
            kinds = sorted(o.kind for o in parts)
            if kinds not in (["secret"], ["private", "public"], ["public"]):
                orphans += parts  # half of a pair, or a duplicate
        unprotected = [o for o in objects if o.kind in ("secret", "private") and o.kid
                       and (not o.sensitive or o.extractable)]
        lost = []
        for kid, key_type in acknowledged.items():
            parts = hem.get(kid, [])
            meta = KeyMeta.decode(parts[0].label) if parts else None
            if meta is None or meta.type.value != key_type or kid in unusable:
                lost.append(kid)
        listed_without_id = sum(1 for o in objects if not o.kid and o.kind != "data")
        return cls(objects, hem, orphans, objects_without_id(setup), unprotected, lost, listed_without_id)


# --------------------------------------------------------------------------- secrets in what the gateway wrote


def forms(value: str | bytes) -> set[str]:
    """The ways a secret could be written down: itself, hex, base64, base64url."""
    if isinstance(value, str):
        return {value}
    return {value.hex(), value.hex().upper(), base64.b64encode(value).decode(),
            base64.urlsafe_b64encode(value).decode().rstrip("=")}


def written_by(setup: ServiceSetup, servers: list[Server], metrics: list[str]) -> dict[str, str]:
    audit_dir = setup.directory / "state" / "audit"
    return {
        "logs": "".join(s.log_text() for s in servers),
        "stdout": "".join("".join(s.stdout) for s in servers),
        "metrics": "".join(metrics),
        "audit": "".join(p.read_text(errors="replace") for p in sorted(audit_dir.glob("*.log"))),
    }


def leaks(secrets: list[str | bytes], written: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, value if isinstance(value, str) else value.hex()[:16] + "...")
            for value in secrets for form in forms(value) for where, text in written.items() if form in text]


# --------------------------------------------------------------------------- making the token folder read-only


def chattr_supported(directory: Path) -> bool:
    probe = directory / ".chattr-probe"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, check=False).returncode == 0
        if ok:
            subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=True)
        return ok
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """The directory and every file in it immutable (``chattr -R +i``), then writable again.

    We run as root, and root ignores file modes; the immutable attribute stops root too
    (no file created, written, renamed or removed), as a read-only medium would.
    """
    subprocess.run(["chattr", "-R", "+i", str(directory)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(directory)], check=True, capture_output=True)


def token_folder(setup: ServiceSetup) -> Path:
    (folder,) = (p for p in (setup.token_dir / "tokens").iterdir() if p.is_dir())
    return folder


def jitter(low: float, high: float) -> float:
    return random.uniform(low, high)
