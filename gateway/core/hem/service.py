"""The HEM dialect's core, assembled from the config and the token that holds HEM keys."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.core.hem.auth import CHALLENGE_KEY_ROLE, SESSION_KEY_ROLE, HemAuth, ReplayGuard, SoftwareChallengeKey, TokenChallengeKey
from gateway.core.hem.keys import HemKeys
from gateway.core.hem.keyuse import HemCrypto
from gateway.core.hem.users import HemUser, load_users_file, merge_users
from gateway.core.system_keys import ensure_system_key
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Config, HemConfig
    from gateway.token import KeyInfo, Token, TokenSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """What identifies a HEM deployment: its eid and its users."""

    eid: str
    users: tuple[HemUser, ...]

    @property
    def scope(self) -> str:
        """The system-key scope of this deployment (several may share a token)."""
        return hashlib.sha256(self.eid.encode("utf-8")).hexdigest()[:16]


def deployment(hem: HemConfig) -> Deployment:
    """eid and users from ``[hem]`` and its users file (read now, not at config load:
    ``gateway tokens init`` writes the file)."""
    inline = tuple(HemUser(u.name, u.public_key, u.role) for u in hem.users)
    file_users: tuple[HemUser, ...] = ()
    eid = hem.eid
    if hem.users_file is not None:
        loaded = load_users_file(hem.users_file)
        file_users = loaded.users
        eid = eid or loaded.eid
    if not eid:
        raise ConfigError("hem.eid: not set, and hem.users_file has no eid; set a stable deployment id "
                          "(e.g. 32 random bytes in base64) before any user is added")
    users = merge_users(inline, file_users)
    if not users and not hem.external_issuers:
        log.warning("HEM: no user is configured; nobody can log in (`gateway hem-user add` makes an entry)")
    return Deployment(eid, users)


def hem_token(config: Config, tokens: TokenSet) -> Token:
    assert config.hem is not None
    return tokens[config.hem.token or tokens.names[0]]


class HemService:
    """Authentication, key management and key use of the HEM dialect on one token."""

    def __init__(self, config: HemConfig, token: Token, auth: HemAuth) -> None:
        self.config = config
        self.token = token
        self.auth = auth
        self.keys = HemKeys(token, config.derive_recipe, config.allow_asymmetric_derive)
        self.crypto = HemCrypto(self.keys)

    @classmethod
    async def start(cls, config: Config, tokens: TokenSet) -> "HemService":
        """Find or create the deployment's keys in the token (shared by every process on it)."""
        from gateway.core.issuers import IssuerSet
        from gateway.token import Curve, HashAlg, SecretSpec, SecretType, Usage

        hem = config.hem
        assert hem is not None
        dep = deployment(hem)
        token = hem_token(config, tokens)
        caps = token.capabilities
        caps.require_hmac(HashAlg.SHA256)  # bearer tokens and challenges are HMACs in the token

        def make_session(kid: bytes, label: str) -> KeyInfo:
            return token.generate_secret(SecretSpec(kid, label, SecretType.GENERIC, 32, Usage(sign=True)))

        lock_dir = config.state_dir / "locks"
        session = await token.run(functools.partial(
            ensure_system_key, token, SESSION_KEY_ROLE, dep.scope, make_session, lock_dir=lock_dir))
        challenge_key: TokenChallengeKey | SoftwareChallengeKey
        if Curve.X25519 in caps.ecdh_curves and Curve.X25519 in caps.curves:
            def make_challenge(kid: bytes, label: str) -> KeyInfo:
                return token.generate_keypair(kid, label, Curve.X25519, Usage(derive=True))

            info = await token.run(functools.partial(
                ensure_system_key, token, CHALLENGE_KEY_ROLE, dep.scope, make_challenge, lock_dir=lock_dir))
            assert info.public_key is not None
            challenge_key = TokenChallengeKey(token, info.kid, info.public_key)
        else:
            log.warning("HEM: token %s has no X25519 ECDH; the challenge key is computed in the gateway", token.name)
            private = await token.run(token.hmac, session.kid, HashAlg.SHA256, b"hem-challenge-x25519\x00" + dep.eid.encode())
            challenge_key = SoftwareChallengeKey(private)
        issuers = IssuerSet.load(hem.external_issuers) if hem.external_issuers else None
        auth = HemAuth(
            token=token, eid=dep.eid, label=hem.label, users=dep.users, session_kid=session.kid,
            challenge_key=challenge_key, replay=ReplayGuard(config.state_dir / "hem" / "jti"),
            max_lifetime=hem.bearer_max_lifetime, failed_login_delay=hem.failed_login_delay_ms / 1000,
            issuers=issuers,
        )
        service = cls(hem, token, auth)
        log.info("HEM dialect on token %s: eid %s, %d user(s), derive recipe %s", token.name, dep.eid,
                 len(dep.users), service.keys.recipe.value)
        return service
