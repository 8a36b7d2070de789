"""Several tokens at once, addressed by their configured names."""

from __future__ import annotations

import asyncio
from typing import Iterator

from ..errors import ConfigError, NotFound
from .settings import TokenSettings
from .token import Token
from .types import KeyInfo


class TokenSet:
    """The tokens of one gateway process, in config order."""

    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = {t.name: t for t in tokens}

    @classmethod
    def open(cls, settings: list[TokenSettings]) -> "TokenSet":
        names = [s.name for s in settings]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"token names must be unique: {', '.join(sorted(dupes))}")
        opened: list[Token] = []
        try:
            for item in settings:
                opened.append(Token(item))
        except BaseException:
            for token in opened:
                token.close()
            raise
        return cls(opened)

    @property
    def names(self) -> list[str]:
        return list(self._tokens)

    def __getitem__(self, name: str) -> Token:
        try:
            return self._tokens[name]
        except KeyError:
            raise NotFound(f"no token named {name!r} is configured") from None

    def __iter__(self) -> Iterator[Token]:
        return iter(self._tokens.values())

    def __len__(self) -> int:
        return len(self._tokens)

    async def readiness(self) -> dict[str, bool]:
        results = await asyncio.gather(*(t.run(t.is_ready) for t in self))
        return dict(zip(self.names, results))

    async def locate(self, kid: bytes) -> KeyInfo:
        """Find a key on whichever token holds it (first match in config order).  Every
        token is looked at before any is asked for a fresh view (which costs a child process)."""
        for fresh in (False, True):
            for token in self:
                info = await token.run(token.find_key, kid, fresh)
                if info is not None:
                    return info
        raise NotFound(f"no key with kid {kid.hex()}")

    def close(self) -> None:
        """Close every token; a module is finalised when its last token closes."""
        for token in self:
            token.close()
