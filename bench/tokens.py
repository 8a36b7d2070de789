"""Fresh tokens for one benchmark run, made before any PKCS#11 module is loaded.

SoftHSM2 scans its token directory only at ``C_Initialize`` and NSS softoken
opens one database per process, so both are created first (in child
processes, by ``gateway.provision``), and ``SOFTHSM2_CONF`` is set for the
whole run, raw worker processes included.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.provision import ensure_nss_db, ensure_softhsm_token
from gateway.token import TokenSettings

MULTIARCH = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"/usr/lib/{MULTIARCH}/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
NSS_CANDIDATES = (f"/usr/lib/{MULTIARCH}/libsoftokn3.so", f"/usr/lib/{MULTIARCH}/nss/libsoftokn3.so")
NSS_LABEL = "NSS Certificate DB"
NSS_INIT_ARGS = "configdir='sql:{directory}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
# Throw-away tokens in a temporary folder: fixed PINs are fine.
PIN = "bench-1234"
SO_PIN = "bench-so-5678"
DERIVE_LABEL = "bench-derive"
LOOKUP_LABEL = "bench-lookup"  # its own token, so its 10,000 keys do not slow the derive cases
GATEWAY_LABEL = "bench-gw"  # the gateway-level cases' SoftHSM2 token (bench.gw), with its own NSS database


def find_module(candidates: tuple[str, ...], override: str | None) -> str | None:
    if override:
        return override
    return next((p for p in candidates if os.path.isfile(p)), None)


@dataclass(frozen=True)
class BenchToken:
    """Adapter settings plus what the raw worker needs to open the same token."""

    settings: TokenSettings

    @property
    def kind(self) -> str:
        return self.settings.name.split("-")[0]

    def raw_config(self) -> dict[str, Any]:
        s = self.settings
        return {"module": s.module, "label": s.label, "pin": s.pin, "init_args": s.init_args,
                "env": dict(s.environment)}


@dataclass(frozen=True)
class BenchTokens:
    softhsm_derive: BenchToken | None
    softhsm_lookup: BenchToken | None
    nss: BenchToken | None
    softhsm_gateway: BenchToken | None = None
    nss_gateway: BenchToken | None = None
    nss_gateway_directory: Path | None = None


def prepare(root: Path, *, softhsm_module: str | None, nss_module: str | None, sessions: int,
            gateway: bool = False) -> BenchTokens:
    """Create the run's tokens under ``root`` and point ``SOFTHSM2_CONF`` at them.

    ``gateway``: also a SoftHSM2 token and an NSS database for the gateway-level cases.
    """
    softhsm_derive = softhsm_lookup = nss = softhsm_gateway = nss_gateway = None
    nss_gateway_directory = None
    if softhsm_module:
        directory = root / "softhsm"
        conf = directory / "softhsm2.conf"
        for label in (DERIVE_LABEL, LOOKUP_LABEL, *((GATEWAY_LABEL,) if gateway else ())):
            conf = ensure_softhsm_token(directory, label, PIN, SO_PIN)
        os.environ["SOFTHSM2_CONF"] = str(conf)
        env = {"SOFTHSM2_CONF": str(conf)}
        softhsm_derive = BenchToken(TokenSettings(name="softhsm", module=softhsm_module, label=DERIVE_LABEL,
                                                  pin=PIN, environment=env, sessions=sessions))
        softhsm_lookup = BenchToken(TokenSettings(name="softhsm-lookup", module=softhsm_module, label=LOOKUP_LABEL,
                                                  pin=PIN, environment=env, sessions=sessions))
        if gateway:
            softhsm_gateway = BenchToken(TokenSettings(name="softhsm-gw", module=softhsm_module, label=GATEWAY_LABEL,
                                                       pin=PIN, environment=env, sessions=sessions))
    if nss_module:
        directory = root / "nss"
        ensure_nss_db(directory, PIN)
        nss = BenchToken(TokenSettings(name="nss", module=nss_module, label=NSS_LABEL, pin=PIN,
                                       init_args=NSS_INIT_ARGS.replace("{directory}", str(directory)),
                                       sessions=sessions))
        if gateway:
            nss_gateway_directory = root / "nss-gw"
            ensure_nss_db(nss_gateway_directory, PIN)
            nss_gateway = BenchToken(TokenSettings(
                name="nss-gw", module=nss_module, label=NSS_LABEL, pin=PIN,
                init_args=NSS_INIT_ARGS.replace("{directory}", str(nss_gateway_directory)), sessions=sessions))
    return BenchTokens(softhsm_derive, softhsm_lookup, nss, softhsm_gateway, nss_gateway, nss_gateway_directory)
