"""NVIDIA GPU attestation reports: the SPDM GET_MEASUREMENTS exchange, decoded without I/O.

A Hopper (or later) GPU in confidential-computing mode answers the driver's SPDM 1.1
GET_MEASUREMENTS request (DMTF DSP0274 §10.11) with a MEASUREMENTS response signed by
its attestation key. NVML hands the guest both messages back to back
(``nvmlDeviceGetConfComputeGpuAttestationReport``); that concatenation is the report:

``request`` (37 bytes)
    SPDMVersion ``0x11``, RequestResponseCode ``0xE0``, Param1 (bit 0: a signature is
    requested), Param2 ``0xFF`` (every measurement), Nonce (32 bytes), SlotIDParam.
``response``
    SPDMVersion ``0x11``, RequestResponseCode ``0x60``, Param1, Param2, NumberOfBlocks,
    MeasurementRecordLength (3 bytes, little-endian), the measurement record (blocks of
    Index, MeasurementSpecification ``0x01`` (DMTF), MeasurementSize (2), then the DMTF
    measurement: value type, value size (2), value), the responder's Nonce (32),
    OpaqueDataLength (2), OpaqueData, Signature.

The signature is ECDSA P-384 over SHA-384 of request || response up to the signature
(SPDM 1.1's measurement transcript), stored as R || S, 48 bytes each, big-endian.
NVIDIA's opaque data is a list of (type: 2 bytes, length: 2 bytes, value) fields; the
ones read here are the driver and VBIOS versions, the chip's project and SKU, and the
FWID of the firmware that signed.

Invariant: :func:`parse_report` returns a report only when every length in it is
consistent with the buffer to the last byte (nothing trailing, nothing missing), the
versions and codes are the ones above, each measurement index appears once and the
signature is present; otherwise it raises :class:`~weightvault.errors.EvidenceError`
with a ``gpu_report*`` code.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from weightvault.errors import EvidenceError

__all__ = [
    "MAX_REPORT_BYTES",
    "REQUEST_SIZE",
    "SIGNATURE_SIZE",
    "GpuReport",
    "parse_report",
]

#: NVML's buffer for the report (``NVML_CC_GPU_ATTESTATION_REPORT_SIZE``).
MAX_REPORT_BYTES: Final = 8 << 10
REQUEST_SIZE: Final = 37
SIGNATURE_SIZE: Final = 96
NONCE_SIZE: Final = 32
SPDM_VERSION_11: Final = 0x11
GET_MEASUREMENTS: Final = 0xE0
MEASUREMENTS: Final = 0x60
DMTF_SPEC: Final = 0x01

#: NVIDIA's opaque data field types that :class:`GpuReport` names.
OPAQUE_DRIVER_VERSION: Final = 3
OPAQUE_VBIOS_VERSION: Final = 6
OPAQUE_CHIP_SKU: Final = 15
OPAQUE_PROJECT: Final = 17
OPAQUE_PROJECT_SKU: Final = 18
OPAQUE_FWID: Final = 20


@dataclass(frozen=True, slots=True)
class GpuReport:
    """One decoded GET_MEASUREMENTS exchange.

    ``measurements`` maps the RIM index (SPDM index minus one, as NVIDIA's reference
    manifests number them) to the measurement value; ``signed`` is every byte the
    signature covers; ``signature`` is R || S.
    """

    request_nonce: bytes
    response_nonce: bytes
    measurements: Mapping[int, bytes]
    opaque: Mapping[int, bytes]
    signed: bytes
    signature: bytes

    def _text(self, field: int) -> str | None:
        raw = self.opaque.get(field)
        if raw is None:
            return None
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def driver_version(self) -> str | None:
        """The driver version the GPU reports, as the driver RIM names it (``550.90.07``)."""
        return self._text(OPAQUE_DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        """The VBIOS version in NVIDIA's dotted form (``96.00.5E.00.01``): bytes 3,2,1,0,4 of the field."""
        raw = self.opaque.get(OPAQUE_VBIOS_VERSION)
        if raw is None or len(raw) < 5:
            return None
        return ".".join(f"{raw[i]:02X}" for i in (3, 2, 1, 0, 4))

    @property
    def project(self) -> str | None:
        return self._text(OPAQUE_PROJECT)

    @property
    def project_sku(self) -> str | None:
        return self._text(OPAQUE_PROJECT_SKU)

    @property
    def chip_sku(self) -> str | None:
        return self._text(OPAQUE_CHIP_SKU)

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get(OPAQUE_FWID)


def _fail(what: str) -> EvidenceError:
    return EvidenceError(f"gpu_report: {what}")


def parse_report(raw: bytes) -> GpuReport:
    """Decode request || response; see the module documentation for the layout and the invariant.

    Raises:
        EvidenceError: ``gpu_report_version`` for another SPDM version or message code,
            ``gpu_report`` for any length that does not add up.
    """
    if len(raw) > MAX_REPORT_BYTES:
        raise _fail(f"larger than {MAX_REPORT_BYTES} bytes")
    if len(raw) < REQUEST_SIZE + 8 + NONCE_SIZE + 2 + SIGNATURE_SIZE:
        raise _fail("truncated")
    request, response = raw[:REQUEST_SIZE], raw[REQUEST_SIZE:]
    if request[0] != SPDM_VERSION_11 or response[0] != SPDM_VERSION_11:
        raise EvidenceError(f"gpu_report_version: SPDM version {request[0]:#x}/{response[0]:#x}, expected 1.1")
    if request[1] != GET_MEASUREMENTS or response[1] != MEASUREMENTS:
        raise EvidenceError("gpu_report_version: not a GET_MEASUREMENTS request and its MEASUREMENTS response")
    if not request[2] & 0x01 or request[3] != 0xFF:
        raise _fail("the request did not ask for every measurement, signed")
    blocks = response[4]
    record_length = int.from_bytes(response[5:8], "little")
    offset = 8
    record = response[offset : offset + record_length]
    if len(record) != record_length:
        raise _fail("truncated measurement record")
    measurements = _measurements(record, blocks)
    offset += record_length
    response_nonce = response[offset : offset + NONCE_SIZE]
    offset += NONCE_SIZE
    if len(response) < offset + 2:
        raise _fail("truncated")
    (opaque_length,) = struct.unpack_from("<H", response, offset)
    offset += 2
    opaque_raw = response[offset : offset + opaque_length]
    offset += opaque_length
    if len(opaque_raw) != opaque_length or len(response) - offset != SIGNATURE_SIZE:
        raise _fail("the lengths of the opaque data and the signature do not add up to the report")
    return GpuReport(
        request_nonce=request[4 : 4 + NONCE_SIZE],
        response_nonce=response_nonce,
        measurements=measurements,
        opaque=_opaque(opaque_raw),
        signed=raw[: len(raw) - SIGNATURE_SIZE],
        signature=raw[len(raw) - SIGNATURE_SIZE :],
    )


def _measurements(record: bytes, blocks: int) -> dict[int, bytes]:
    values: dict[int, bytes] = {}
    offset = 0
    for _ in range(blocks):
        if len(record) < offset + 4:
            raise _fail("truncated measurement block")
        index, spec, size = struct.unpack_from("<BBH", record, offset)
        offset += 4
        body = record[offset : offset + size]
        offset += size
        if len(body) != size or size < 3:
            raise _fail("truncated measurement block")
        if spec != DMTF_SPEC:
            raise _fail(f"measurement {index} is not in the DMTF format")
        (value_size,) = struct.unpack_from("<H", body, 1)
        if value_size != size - 3:
            raise _fail(f"measurement {index}'s value size does not match its block")
        if index == 0 or index - 1 in values:
            raise _fail(f"measurement index {index} is invalid or repeated")
        values[index - 1] = body[3:]
    if offset != len(record):
        raise _fail("the measurement record holds more than its blocks")
    return values


def _opaque(raw: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        if len(raw) < offset + 4:
            raise _fail("truncated opaque data")
        kind, size = struct.unpack_from("<HH", raw, offset)
        offset += 4
        value = raw[offset : offset + size]
        offset += size
        if len(value) != size:
            raise _fail("truncated opaque data")
        if kind in fields:
            raise _fail(f"opaque field {kind} is repeated")
        fields[kind] = value
    return fields
