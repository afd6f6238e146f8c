"""TCG crypto-agile event logs: codec, replay, checks against quoted PCRs, and tpm2-tools interop."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.attestation.tpm.eventlog import (
    ALG_SHA1,
    ALG_SHA256,
    EV_IPL,
    EV_NO_ACTION,
    MAX_LOG_BYTES,
    Event,
    check_event_logs,
    encode_event_log,
    parse_event_log,
    replay_sha256,
)
from weightvault.errors import QuoteError

BOTH = {ALG_SHA1: 20, ALG_SHA256: 32}


def _event(pcr: int, text: bytes, algorithms: dict[int, int] | None = None) -> Event:
    digests = {ALG_SHA256: hashlib.sha256(text).digest()}
    if algorithms and ALG_SHA1 in algorithms:
        digests[ALG_SHA1] = hashlib.sha1(text).digest()
    return Event(pcr, EV_IPL, digests, b"weightvault: " + text + b"\x00")


def _chain(*texts: bytes, start: bytes = bytes(32)) -> bytes:
    value = start
    for text in texts:
        value = hashlib.sha256(value + hashlib.sha256(text).digest()).digest()
    return value


events = st.lists(
    st.builds(
        Event,
        pcr=st.integers(0, 23),
        type=st.integers(0, 2**32 - 1),
        digests=st.builds(
            lambda a, b: {ALG_SHA1: a, ALG_SHA256: b},
            st.binary(min_size=20, max_size=20),
            st.binary(min_size=32, max_size=32),
        ),
        data=st.binary(max_size=64),
    ),
    max_size=12,
)


@settings(max_examples=60)
@given(events)
def test_encode_parse_round_trip(evs: list[Event]) -> None:
    log = parse_event_log(encode_event_log(evs, BOTH))
    assert dict(log.algorithms) == BOTH
    assert list(log.events) == evs


def test_replay_follows_the_extend_rule() -> None:
    log = parse_event_log(encode_event_log([_event(23, b"image"), _event(7, b"sb"), _event(23, b"model")]))
    assert replay_sha256(log) == {23: _chain(b"image", b"model"), 7: _chain(b"sb")}


def test_no_action_events_are_not_extended_and_startup_locality_sets_pcr0() -> None:
    locality = Event(0, EV_NO_ACTION, {ALG_SHA256: bytes(32)}, b"StartupLocality\x00\x03")
    other = Event(1, EV_NO_ACTION, {ALG_SHA256: b"\x01" * 32}, b"anything")
    log = parse_event_log(encode_event_log([locality, other, _event(0, b"crtm"), _event(1, b"cfg")]))
    assert replay_sha256(log) == {0: _chain(b"crtm", start=bytes(31) + b"\x03"), 1: _chain(b"cfg")}


@pytest.mark.parametrize("cut", range(1, 60, 3))
def test_every_truncation_is_malformed(cut: int) -> None:
    blob = encode_event_log([_event(23, b"a"), _event(23, b"b")])
    with pytest.raises(QuoteError, match=r"^event_log_malformed"):
        parse_event_log(blob[:-cut])


def _header_with(spec: bytes) -> bytes:
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"", "truncated"),
        (struct.pack("<II", 0, 4) + bytes(24), "not a Spec ID"),
        (_header_with(b"Spec ID Event02\x00" + bytes(13)), "signature"),
        (_header_with(b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 0) + b"\x00"), "0 digest"),
        (
            _header_with(b"Spec ID Event03\x00" + struct.pack("<IBBBBIHH", 0, 0, 2, 0, 2, 1, ALG_SHA256, 20) + b"\x00"),
            "digest size",
        ),
        (
            _header_with(b"Spec ID Event03\x00" + struct.pack("<IBBBBIHH", 0, 0, 2, 0, 9, 1, ALG_SHA256, 32) + b"\x00"),
            "uintnSize",
        ),
        (
            _header_with(
                b"Spec ID Event03\x00" + struct.pack("<IBBBBIHH", 0, 0, 2, 0, 2, 1, ALG_SHA256, 32) + b"\x00junk"
            ),
            "trailing",
        ),
        (encode_event_log([]) + struct.pack("<III", 24, EV_IPL, 1), "PCR 24"),
        (encode_event_log([]) + struct.pack("<III", 23, EV_IPL, 2), "2 digests"),
        (encode_event_log([]) + struct.pack("<IIIH", 23, EV_IPL, 1, ALG_SHA1) + bytes(32), "unexpected digest"),
        (
            encode_event_log([]) + struct.pack("<IIIH", 23, EV_IPL, 1, ALG_SHA256) + bytes(32) + b"\xff" * 4,
            "event data",
        ),
        (encode_event_log([]) + bytes(MAX_LOG_BYTES), "larger than"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_logs_name_their_problem(blob: bytes, problem: str) -> None:
    with pytest.raises(QuoteError, match=rf"^event_log_malformed: .*{problem}"):
        parse_event_log(blob)


def test_too_many_events() -> None:
    blob = encode_event_log([Event(23, EV_NO_ACTION, {ALG_SHA256: bytes(32)}, b"")] * 16_385)
    assert len(blob) < MAX_LOG_BYTES
    with pytest.raises(QuoteError, match="more than 16384 events"):
        parse_event_log(blob)


def test_a_log_without_sha256_cannot_be_replayed() -> None:
    sha1_only = encode_event_log([Event(23, EV_IPL, {ALG_SHA1: bytes(20)}, b"")], {ALG_SHA1: 20})
    with pytest.raises(QuoteError, match="no SHA-256"):
        replay_sha256(parse_event_log(sha1_only))


def test_check_returns_the_verified_events_of_quoted_pcrs_only() -> None:
    log = encode_event_log([_event(23, b"image"), _event(14, b"mok"), _event(23, b"model")])
    quoted = {7: bytes(32), 23: _chain(b"image", b"model")}
    verified = check_event_logs([log], quoted)
    assert verified == {23: [hashlib.sha256(b"image").hexdigest(), hashlib.sha256(b"model").hexdigest()]}


@pytest.mark.parametrize(
    "evs",
    [
        [_event(23, b"image")],  # an event dropped
        [_event(23, b"model"), _event(23, b"image")],  # reordered
        [_event(23, b"image"), _event(23, b"other")],  # altered
        [_event(23, b"image"), _event(23, b"model"), _event(23, b"extra")],  # added
    ],
    ids=["dropped", "reordered", "altered", "added"],
)
def test_any_change_to_a_quoted_pcrs_events_is_a_mismatch(evs: list[Event]) -> None:
    quoted = {23: _chain(b"image", b"model")}
    with pytest.raises(QuoteError, match=r"^event_log_mismatch: log 1 replays PCR 23"):
        check_event_logs([encode_event_log(evs)], quoted)


def test_two_logs_may_not_extend_the_same_pcr() -> None:
    firmware = encode_event_log([_event(0, b"crtm"), _event(7, b"sb")])
    workload = encode_event_log([_event(23, b"image")])
    quoted = {0: _chain(b"crtm"), 7: _chain(b"sb"), 23: _chain(b"image")}
    assert set(check_event_logs([firmware, workload], quoted)) == {0, 7, 23}
    with pytest.raises(QuoteError, match="PCR 7 is extended by more than one log"):
        check_event_logs([firmware, encode_event_log([_event(7, b"sb")])], quoted)


def test_tpm2_tools_reads_our_logs_and_replays_the_same_values(tmp_path: Path) -> None:
    """Interop: tpm2_eventlog (tpm2-tools) parses a log we wrote and computes the same SHA-256 PCRs."""
    if shutil.which("tpm2_eventlog") is None:
        message = "needs tpm2_eventlog (apt-get install tpm2-tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    evs = [_event(23, b"image", BOTH), _event(0, b"crtm", BOTH), _event(7, b"sb", BOTH), _event(23, b"model", BOTH)]
    path = tmp_path / "log.bin"
    path.write_bytes(encode_event_log(evs, BOTH))
    out = subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, text=True, check=True).stdout
    bank = out.split("pcrs:", 1)[1].split("sha256:", 1)[1]
    theirs = {}
    for line in bank.strip().splitlines():
        index, _, value = line.partition(":")
        theirs[int(index)] = bytes.fromhex(value.strip().removeprefix("0x"))
    assert theirs == replay_sha256(parse_event_log(path.read_bytes()))
