"""TCG event logs (crypto-agile format) and their replay against quoted PCRs: pure, no I/O.

A PCR value alone says *that* something was measured; the event log says *what*.
The verifier replays each log's SHA-256 digests from the PCRs' reset values and
accepts the events of a PCR only when the replay equals the value the TPM quoted,
so no event can be added, dropped, reordered or altered without detection. Claims
are made only for PCRs that are both in a log and in the quote.

Format (TCG PC Client Platform Firmware Profile, section 10, little-endian):

* the first record is a TCG_PCClientPCREvent (SHA-1 layout: pcrIndex u32,
  eventType u32 = EV_NO_ACTION, digest[20] = 0, eventSize u32, event) whose event is
  the ``Spec ID Event03`` structure naming every digest algorithm and its size;
* every later record is a TCG_PCR_EVENT2: pcrIndex u32, eventType u32, digest count
  u32, then (algorithmId u16, digest) per algorithm, eventSize u32, event.

EV_NO_ACTION records are not extended; the one named ``StartupLocality`` sets PCR 0's
reset value to its locality byte. This is the format Linux exposes at
``/sys/kernel/security/tpm0/binary_bios_measurements`` and that ``tpm2_eventlog``
reads; weightvault's workload measurements (``weightvault device extend
--event-log``) are written in it too, as EV_IPL events whose data describes the
measured object.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from weightvault.errors import QuoteError

__all__ = [
    "EV_IPL",
    "EV_NO_ACTION",
    "MAX_LOG_BYTES",
    "Event",
    "EventLog",
    "check_event_logs",
    "encode_event_log",
    "parse_event_log",
    "replay_sha256",
]

EV_NO_ACTION: Final = 0x00000003
EV_IPL: Final = 0x0000000D
ALG_SHA1: Final = 0x0004
ALG_SHA256: Final = 0x000B
_DIGEST_SIZES: Final = {ALG_SHA1: 20, ALG_SHA256: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}
_SPEC_ID: Final = b"Spec ID Event03\x00"
_STARTUP_LOCALITY: Final = b"StartupLocality\x00"
#: Firmware logs are tens of KiB; the limits keep a hostile log from costing more than a quote.
MAX_LOG_BYTES: Final = 1 << 20
MAX_EVENTS: Final = 16_384
_MAX_PCR: Final = 23


def _malformed(message: str) -> QuoteError:
    return QuoteError(f"event_log_malformed: {message}")


@dataclass(frozen=True, slots=True)
class Event:
    """One TCG_PCR_EVENT2 record."""

    pcr: int
    type: int
    digests: Mapping[int, bytes]  # TPM_ALG_ID -> digest
    data: bytes


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed crypto-agile log: its algorithms (from the Spec ID event) and its records."""

    algorithms: Mapping[int, int]  # TPM_ALG_ID -> digest size
    events: tuple[Event, ...]


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.at + n > len(self.blob):
            raise _malformed(f"truncated in {what} at byte {self.at}")
        out = self.blob[self.at : self.at + n]
        self.at += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def _spec_id(reader: _Reader) -> dict[int, int]:
    pcr, kind = reader.u32("header pcrIndex"), reader.u32("header eventType")
    if pcr != 0 or kind != EV_NO_ACTION or reader.take(20, "header digest") != bytes(20):
        raise _malformed("the first record is not a Spec ID EV_NO_ACTION event (not a crypto-agile log)")
    spec = _Reader(reader.take(reader.u32("header eventSize"), "Spec ID event"))
    if spec.take(16, "signature") != _SPEC_ID:
        raise _malformed("the Spec ID event's signature is not 'Spec ID Event03'")
    spec.take(4 + 3, "platform class and version")
    if spec.u8("uintnSize") not in {1, 2}:
        raise _malformed("uintnSize must be 1 or 2")
    count = spec.u32("numberOfAlgorithms")
    if not 1 <= count <= len(_DIGEST_SIZES):
        raise _malformed(f"{count} digest algorithms")
    algorithms: dict[int, int] = {}
    for _ in range(count):
        alg, size = spec.u16("algorithmId"), spec.u16("digestSize")
        if alg in algorithms or _DIGEST_SIZES.get(alg, size) != size or not 1 <= size <= 64:
            raise _malformed(f"algorithm {alg:#06x} with digest size {size}")
        algorithms[alg] = size
    spec.take(spec.u8("vendorInfoSize"), "vendorInfo")
    if spec.at != len(spec.blob):
        raise _malformed("trailing bytes in the Spec ID event")
    return algorithms


def parse_event_log(blob: bytes) -> EventLog:
    """Parse a crypto-agile TCG event log.

    Raises:
        QuoteError: ``event_log_malformed`` for anything but a well-formed log within the limits.
    """
    if len(blob) > MAX_LOG_BYTES:
        raise _malformed(f"larger than {MAX_LOG_BYTES} bytes")
    reader = _Reader(blob)
    algorithms = _spec_id(reader)
    events: list[Event] = []
    while reader.at < len(blob):
        if len(events) == MAX_EVENTS:
            raise _malformed(f"more than {MAX_EVENTS} events")
        pcr, kind = reader.u32("pcrIndex"), reader.u32("eventType")
        if pcr > _MAX_PCR:
            raise _malformed(f"event {len(events) + 1} names PCR {pcr}")
        count = reader.u32("digest count")
        if count != len(algorithms):
            raise _malformed(f"event {len(events) + 1} has {count} digests for {len(algorithms)} algorithms")
        digests: dict[int, bytes] = {}
        for _ in range(count):
            alg = reader.u16("hashAlg")
            if alg not in algorithms or alg in digests:
                raise _malformed(f"event {len(events) + 1} has an unexpected digest algorithm {alg:#06x}")
            digests[alg] = reader.take(algorithms[alg], "digest")
        data = reader.take(reader.u32("eventSize"), "event data")
        events.append(Event(pcr, kind, digests, data))
    return EventLog(algorithms, tuple(events))


def encode_event_log(events: Sequence[Event], algorithms: Mapping[int, int] | None = None) -> bytes:
    """Serialise events (with the Spec ID header) in the format :func:`parse_event_log` reads."""
    algs = dict(algorithms or {ALG_SHA256: 32})
    spec = bytearray(_SPEC_ID)
    spec += struct.pack("<IBBBB", 0, 0, 2, 0, 2)  # platform class, version 2.0 errata 0, UINT64
    spec += struct.pack("<I", len(algs))
    for alg, size in algs.items():
        spec += struct.pack("<HH", alg, size)
    spec += b"\x00"  # no vendor info
    out = bytearray(struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec)
    for event in events:
        if set(event.digests) != set(algs) or any(len(event.digests[a]) != algs[a] for a in algs):
            raise ValueError("every event needs one digest of the right size per algorithm")
        out += struct.pack("<III", event.pcr, event.type, len(algs))
        for alg in algs:
            out += struct.pack("<H", alg) + event.digests[alg]
        out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)


def replay_sha256(log: EventLog) -> dict[int, bytes]:
    """The SHA-256 PCR values the log's events produce, for every PCR it extends.

    Raises:
        QuoteError: ``event_log_malformed`` when the log has no SHA-256 digests.
    """
    if ALG_SHA256 not in log.algorithms:
        raise _malformed("the log has no SHA-256 digests")
    values: dict[int, bytes] = {}
    start0 = bytes(32)
    for event in log.events:
        if event.type == EV_NO_ACTION:
            if event.pcr == 0 and event.data[:16] == _STARTUP_LOCALITY and len(event.data) == 17:
                start0 = bytes(31) + event.data[16:17]
            continue
        current = values.get(event.pcr, start0 if event.pcr == 0 else bytes(32))
        values[event.pcr] = hashlib.sha256(current + event.digests[ALG_SHA256]).digest()
    return values


def check_event_logs(logs: Sequence[bytes], quoted: Mapping[int, bytes]) -> dict[int, list[str]]:
    """Replay ``logs`` against the quoted SHA-256 PCR values; returns the verified events' digests per PCR.

    Only PCRs that a log extends *and* the quote covers are verified and returned
    (hex digests in log order, EV_NO_ACTION records left out). A PCR may be
    extended by one log only, since two logs have no common order.

    Raises:
        QuoteError: ``event_log_malformed``, or ``event_log_mismatch`` when a replayed
            PCR differs from the quoted value.
    """
    seen: set[int] = set()
    verified: dict[int, list[str]] = {}
    for number, blob in enumerate(logs, 1):
        log = parse_event_log(blob)
        replayed = replay_sha256(log)
        if seen & set(replayed):
            raise _malformed(f"PCR {min(seen & set(replayed))} is extended by more than one log")
        seen |= set(replayed)
        for pcr, value in sorted(replayed.items()):
            if pcr not in quoted:
                continue
            if not hmac.compare_digest(value, quoted[pcr]):
                raise QuoteError(
                    f"event_log_mismatch: log {number} replays PCR {pcr} to {value.hex()[:16]}…, "
                    f"the quote has {quoted[pcr].hex()[:16]}…"
                )
            verified[pcr] = [e.digests[ALG_SHA256].hex() for e in log.events if e.pcr == pcr and e.type != EV_NO_ACTION]
    return verified
