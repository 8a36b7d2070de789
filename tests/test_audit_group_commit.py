"""Audit records that arrive together are written together (group commit), in one gapless chain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.core.audit import AuditEvent, AuditLog, AuditResult, VerifySummary, verify_with_token
from gateway.token import Token, TokenSet


@pytest.fixture(scope="module")
def token(softhsm_settings: object) -> Iterator[Token]:
    tokens = TokenSet.open([softhsm_settings("stress", name="audit-batch")])  # type: ignore[operator]
    yield tokens["audit-batch"]
    tokens.close()


def event(i: int) -> AuditEvent:
    return AuditEvent(event="CRYPTO_ECDH", code=None, result=AuditResult.OK, status=200, subject="U:alice",
                      kids=(f"{i:032x}",), request_id=f"req-{i}", dialect="hem")


class CountingLog(AuditLog):
    """Remembers the size of every batch it writes."""

    batches: list[int]

    def _append_batch(self, events: Sequence[AuditEvent]) -> list[int]:
        self.batches.append(len(events))
        return super()._append_batch(events)


async def test_concurrent_records_share_batches_and_keep_the_chain(token: Token, tmp_path: Path) -> None:
    log = await CountingLog.open(tmp_path, token)
    assert isinstance(log, CountingLog)
    log.batches = []
    first = await log.record(event(0))
    seqs = await asyncio.gather(*(log.record(event(i)) for i in range(1, 51)))
    # Each caller gets its own record's number, in the order the calls were made.
    assert [first, *seqs] == list(range(1, 52))
    # All 50 were queued before the writer ran: one batch, one lock, one write.
    assert log.batches == [1, 50]
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 51 and result.last_seq == 51
    log.close()


async def test_a_failed_batch_fails_every_waiting_caller(token: Token, tmp_path: Path) -> None:
    log = await AuditLog.open(tmp_path, token)
    await log.record(event(0))
    real = log.key_kid
    log.key_kid = bytes(16)  # no such key: the MAC of the next batch fails in the token
    results = await asyncio.gather(*(log.record(event(i)) for i in range(1, 6)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    log.key_kid = real
    assert await log.record(event(6)) == 2  # nothing of the failed batch was written
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 2
    log.close()
