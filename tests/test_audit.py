"""The hash-chained, MAC-sealed audit log on a real token: appends, verification, tampering, segments, concurrency."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.audit import (_TAIL_BYTES, AuditEvent, AuditLog, AuditResult, BadRecord, VerifySummary, _last_record, segment_ids,
                                verify, verify_with_token)
from gateway.token import HashAlg, Token, TokenSet
from gateway.token.settings import TokenSettings


@pytest.fixture(scope="module")
def token(softhsm_settings: object) -> Iterator[Token]:
    tokens = TokenSet.open([softhsm_settings("hem-raw2", name="audit")])  # type: ignore[operator]
    yield tokens["audit"]
    tokens.close()


def event(i: int, status: int = 200) -> AuditEvent:
    return AuditEvent(event="KEY_DERIVE", code=26, result=AuditResult.for_status(status), status=status,
                      subject="U:alice", kids=(f"{i:032x}",), request_id=f"req-{i}", dialect="hem")


async def open_log(token: Token, directory: Path, **kwargs: object) -> AuditLog:
    return await AuditLog.open(directory, token, **kwargs)  # type: ignore[arg-type]


def lines(directory: Path) -> list[tuple[Path, int, dict[str, object]]]:
    out = []
    for seg in segment_ids(directory):
        path = directory / f"{seg}.log"
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            out.append((path, number, json.loads(raw)))
    return out


def rewrite(path: Path, number: int, change: object) -> None:
    raw = path.read_bytes().splitlines(keepends=True)
    raw[number - 1] = change(raw[number - 1])  # type: ignore[operator]
    path.write_bytes(b"".join(raw))


async def test_records_chain_and_verify(token: Token, tmp_path: Path) -> None:
    log = await open_log(token, tmp_path)
    seqs = [await log.record(event(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary)
    assert (result.records, result.segments, result.last_seq) == (5, 1, 5)
    records = [r for _, _, r in lines(tmp_path)]
    assert records[2]["event"] == "KEY_DERIVE" and records[2]["code"] == 26 and records[2]["result_name"] == "OK"
    assert records[2]["kids"] == [f"{2:032x}"] and records[2]["request_id"] == "req-2"


async def test_hash_chain_and_seal_in_the_token(token: Token, tmp_path: Path) -> None:
    """hash = SHA-256(prev hash || canonical record); the seal is HMAC-SHA256(K, hash) with the
    key in the token: recompute both."""
    log = await open_log(token, tmp_path)
    await log.record(event(1))
    await log.record(event(2))
    first, second = (r for _, _, r in lines(tmp_path))
    body = {k: v for k, v in second.items() if k not in ("hash", "mac")}
    data = bytes.fromhex(str(first["hash"])) + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(data).hexdigest() == second["hash"]
    link = bytes.fromhex(str(second["hash"]))
    assert token.hmac(log.key_kid, HashAlg.SHA256, link).hex() == second["mac"]
    # the seal is not a plain hash nor a MAC under some known key
    assert second["mac"] != hashlib.sha256(link).hexdigest()
    assert second["mac"] != hmac.new(bytes(32), link, hashlib.sha256).hexdigest()


async def test_one_seal_per_append(token: Token, tmp_path: Path) -> None:
    """An append of several records (the group commit) costs one MAC in the token: on its last record."""
    log = await open_log(token, tmp_path)
    log._append_batch([event(i) for i in range(4)])
    log._append_batch([event(i) for i in range(4, 6)])
    records = [r for _, _, r in lines(tmp_path)]
    assert [("mac" in r) for r in records] == [False, False, False, True, False, True]
    assert all(len(str(r["hash"])) == 64 for r in records)
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 6 and result.last_mac == records[-1]["mac"]


async def test_recomputed_hashes_stop_at_the_next_seal(token: Token, tmp_path: Path) -> None:
    """Whoever changes an unsealed record and recomputes the hashes after it cannot make the seal."""
    log = await open_log(token, tmp_path)
    log._append_batch([event(i) for i in range(5)])
    path = tmp_path / f"{segment_ids(tmp_path)[0]}.log"
    records = [json.loads(raw) for raw in path.read_bytes().splitlines()]
    records[1]["status"] = 403
    prev = bytes.fromhex(records[0]["hash"])
    for record in records[1:]:
        body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
        prev = hashlib.sha256(prev + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()
        record["hash"] = prev.hex()
    path.write_bytes(b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n" for r in records))
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and (result.line, result.seq) == (5, 5) and "MAC" in result.reason


async def test_a_log_must_end_with_a_seal(token: Token, tmp_path: Path) -> None:
    """The last record of an append removed, or a record added without the key: the end is unsealed."""
    log = await open_log(token, tmp_path)
    log._append_batch([event(i) for i in range(3)])
    path = tmp_path / f"{segment_ids(tmp_path)[0]}.log"
    raw = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(raw[:2]))
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and result.line == 2 and "ends" in result.reason


async def test_records_from_before_hashes_still_verify(token: Token, tmp_path: Path) -> None:
    """A log written when every record had its own MAC (HMAC(K, prev mac || record)) goes on."""
    log = await open_log(token, tmp_path)
    prev, old = bytes(32), []
    for i in range(1, 4):
        body = event(i).body(i)
        mac = token.hmac(log.key_kid, HashAlg.SHA256, prev + json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
        old.append(json.dumps({**body, "mac": mac.hex()}, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        prev = mac
    (tmp_path / "00000001.log").write_bytes(b"".join(old))
    assert await log.record(event(4)) == 4
    records = [r for _, _, r in lines(tmp_path)]
    body = {k: v for k, v in records[3].items() if k not in ("hash", "mac")}
    assert hashlib.sha256(prev + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == records[3]["hash"]
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 4
    (tmp_path / "00000001.log").write_bytes(b"".join(old).replace(b'"status":200', b'"status":201', 1))
    bad = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(bad, BadRecord) and bad.line == 1 and "MAC" in bad.reason


@pytest.mark.parametrize("field", ["status", "subject", "kids", "time"])
async def test_a_changed_record_is_named(token: Token, tmp_path: Path, field: str) -> None:
    log = await open_log(token, tmp_path)
    for i in range(6):
        await log.record(event(i))
    path, number, record = lines(tmp_path)[3]

    def change(raw: bytes) -> bytes:
        data = json.loads(raw)
        data[field] = {"status": 403, "subject": "U:mallory", "kids": [], "time": "2000-01-01T00:00:00.000Z"}[field]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    rewrite(path, number, change)
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord)
    assert (result.line, result.seq) == (4, 4) and "hash" in result.reason


async def test_removed_and_reordered_records_are_named(token: Token, tmp_path: Path) -> None:
    log = await open_log(token, tmp_path)
    for i in range(5):
        await log.record(event(i))
    path = tmp_path / f"{segment_ids(tmp_path)[0]}.log"
    original = path.read_bytes()
    raw = original.splitlines(keepends=True)
    path.write_bytes(b"".join(raw[:1] + raw[2:]))  # record 2 removed
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and result.line == 2 and "expected 2" in result.reason
    path.write_bytes(b"".join(raw[1:]))  # the first record removed
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and result.line == 1
    path.write_bytes(b"".join([raw[0], raw[2], raw[1], *raw[3:]]))  # two swapped
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and result.line == 2
    path.write_bytes(original + b'{"seq": 6')  # a torn last line
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, BadRecord) and result.line == 6


async def test_segments_rotate_and_the_chain_crosses_them(token: Token, tmp_path: Path) -> None:
    log = await open_log(token, tmp_path, segment_bytes=4096)
    for i in range(40):
        await log.record(event(i, 200 if i % 3 else 406))
    assert len(log.segments()) >= 3
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 40 and result.segments == len(log.segments())
    second = tmp_path / f"{log.segments()[1]}.log"
    rewrite(second, 1, lambda raw: raw.replace(b'"status":200', b'"status":201').replace(b'"status":406', b'"status":407'))
    bad = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(bad, BadRecord) and bad.segment == log.segments()[1] and bad.line == 1
    assert sum(log.read_segment(s).count("\n") for s in log.segments()) == 40


async def test_concurrent_writers_keep_one_chain(token: Token, tmp_path: Path) -> None:
    """Two logs on one directory (as two processes have) and threads in each: one gapless chain."""
    logs = [await open_log(token, tmp_path), await open_log(token, tmp_path)]
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(log: AuditLog, base: int) -> None:
        for i in range(25):
            seq = log._append(event(base + i))
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=writer, args=(logs[n % 2], n * 100)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))
    result = verify(tmp_path, lambda data: token.hmac(logs[0].key_kid, HashAlg.SHA256, data))
    assert isinstance(result, VerifySummary) and result.records == 100


async def test_another_process_finds_the_same_key(token: Token, softhsm_settings: object, tmp_path: Path) -> None:
    """A second Token object (its own sessions and handle cache) uses the same audit key."""
    log = await open_log(token, tmp_path)
    await log.record(event(1))
    other_settings: TokenSettings = softhsm_settings("hem-raw2", name="audit-other")  # type: ignore[operator]
    other = Token(other_settings)
    try:
        again = await AuditLog.open(tmp_path, other)
        assert again.key_kid == log.key_kid
        await again.record(event(2))
        assert isinstance(verify_with_token(tmp_path, other), VerifySummary)
    finally:
        other.close()


async def test_two_writers_taking_turns_across_segments_keep_one_chain(token: Token, tmp_path: Path) -> None:
    """Each log remembers where its own last append ended and skips reading the file back;
    an append by the other (a new end, or a new segment) must be noticed every time."""
    logs = [await open_log(token, tmp_path, segment_bytes=2048), await open_log(token, tmp_path, segment_bytes=2048)]
    for i in range(30):
        logs[(i // 3) % 2]._append_batch([event(i)] * (1 + i % 2))
    assert len(segment_ids(tmp_path)) >= 5
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 45 and result.last_seq == 45



async def test_the_longest_record_is_read_back_by_the_other_writer(token: Token, tmp_path: Path) -> None:
    """An append after another writer's reads only the end of the file back (``_TAIL_BYTES``):
    the longest record the log writes fits in it many times over."""
    logs = [await open_log(token, tmp_path), await open_log(token, tmp_path)]
    longest = AuditEvent(event="KEY_DERIVE", code=26, result=AuditResult.ERROR, status=400,
                         subject="U:" + "\u00e9" * 300, kids=tuple(f"{i:032x}" for i in range(20)),
                         request_id="r" * 300, dialect="hem", detail="\u00e9" * 500)
    logs[0]._append_batch([longest] * 2)
    path = tmp_path / f"{segment_ids(tmp_path)[0]}.log"
    assert max(len(line) for line in path.read_bytes().splitlines()) * 2 < _TAIL_BYTES
    logs[1]._append_batch([event(3)])
    assert [r["seq"] for _, _, r in lines(tmp_path)] == [1, 2, 3]
    result = await token.run(verify_with_token, tmp_path, token)
    assert isinstance(result, VerifySummary) and result.records == 3


@pytest.mark.parametrize("lines_before", [0, 1, 3])
def test_a_last_line_longer_than_the_tail_read_is_read_whole(tmp_path: Path, lines_before: int) -> None:
    path = tmp_path / "00000001.log"
    long = {"seq": lines_before + 1, "hash": "ab" * 32, "pad": "x" * (3 * _TAIL_BYTES)}
    path.write_bytes(b"".join(json.dumps({"seq": i + 1}).encode() + b"\n" for i in range(lines_before))
                     + json.dumps(long).encode() + b"\n")
    assert _last_record(path) == long
    path.write_bytes(b"")
    assert _last_record(path) is None


async def test_a_segment_moved_away_is_not_appended_to(token: Token, tmp_path: Path) -> None:
    """The log keeps its segment open between appends, but looks the path up again each time:
    a segment an operator moved away (archived) stays as it was."""
    log = await open_log(token, tmp_path / "log")
    log._append_batch([event(1)])
    moved = tmp_path / "archived.log"
    (tmp_path / "log" / f"{segment_ids(tmp_path / 'log')[0]}.log").rename(moved)
    before = moved.read_bytes()
    log._append_batch([event(2)])
    assert moved.read_bytes() == before
    assert [r["seq"] for _, _, r in lines(tmp_path / "log")] == [1]  # a new log, as after any removal
    log.close()


def test_a_records_canonical_form_is_written_out_as_json_would_sort_and_escape_it() -> None:
    """AuditEvent.canonical (the audit thread's fast path) equals canonical(body) byte for byte:
    what verify recomputes from the stored line."""
    import random

    from gateway.core.audit import MAX_DETAIL_CHARS, MAX_KIDS, canonical

    rng = random.Random(6)
    alphabet = 'aZ09 "\\/\n\t\x00\x7f\u00e9\u20ac\U0001f511<>&:,{}[]' + "'"

    def text(most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(most)))

    for i in range(500):
        event = AuditEvent(
            event=text(20), result=rng.choice(list(AuditResult)), status=rng.choice([200, 201, 401, 403, 406, 503]),
            subject=text(260), kids=tuple(text(40) for _ in range(rng.randrange(MAX_KIDS + 3))),
            request_id=text(160), dialect=rng.choice(["hem", "vault", ""]), code=rng.choice([None, 0, 26, 1234]),
            detail=rng.choice(["", text(MAX_DETAIL_CHARS + 40)]), time=rng.uniform(0, 4e9),
        )
        seq = rng.randrange(1, 1 << 40)
        assert event.canonical(seq) == canonical(event.body(seq)), i


def test_a_records_time_is_what_datetime_says_to_the_millisecond() -> None:
    """_stamp (gateway.timestamps) formats the date and time of day once per second; the text is datetime's."""
    import random
    from datetime import datetime, timezone

    from gateway.core.audit import _stamp

    rng = random.Random(12)
    second = 1_796_000_000
    times = [rng.uniform(0, 4e9) for _ in range(3000)]
    times += [second + f for f in (0.0, 0.0004994, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.99999999)]
    times += sorted(second + rng.random() * 3 for _ in range(3000))  # the same second again and again
    for when in times:
        expected = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert _stamp(when) == expected, repr(when)
