"""How one configured token is reached: what the config layer hands the adapter."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenSettings:
    """One PKCS#11 token the gateway uses, addressed by ``name`` everywhere else.

    ``label`` or ``serial`` selects the token among the module's slots.
    ``init_args`` goes verbatim into ``CK_C_INITIALIZE_ARGS.pReserved`` (NSS
    softoken needs its ``configdir=...`` string there).  ``environment`` is set
    in the process environment before the module is initialised (SoftHSM2
    reads ``SOFTHSM2_CONF`` at ``C_Initialize``).  ``pin`` is already resolved
    from the environment or a file by the config layer and is never logged.
    """

    name: str
    module: str
    label: str | None = None
    serial: str | None = None
    pin: str | None = field(default=None, repr=False)
    init_args: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    sessions: int = 4
    # "one-process": on modules that re-read their storage after another process's writes
    # (SoftHSM2), one gateway process makes every object change (writerelay.py);
    # "every-process": each process makes its own.
    object_writes: str = "one-process"

    def __post_init__(self) -> None:
        if not self.label and not self.serial:
            raise ValueError(f"token {self.name!r}: set 'label' or 'serial'")
        if self.sessions < 1:
            raise ValueError(f"token {self.name!r}: 'sessions' must be at least 1")
        if self.object_writes not in ("one-process", "every-process"):
            raise ValueError(f"token {self.name!r}: 'object_writes' must be one-process or every-process")
