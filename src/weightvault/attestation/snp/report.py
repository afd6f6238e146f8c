"""AMD SEV-SNP attestation reports: the binary layout, decoded without I/O.

The layout is table 23 ("ATTESTATION_REPORT structure") of AMD's *SEV Secure Nested
Paging Firmware ABI Specification* (publication 56860). A report is exactly 1184 bytes:
the firmware signs bytes ``0x000..0x29F`` with ECDSA P-384 / SHA-384 under the chip's
VCEK (or the cloud provider's VLEK), and stores the signature at ``0x2A0`` as R and S,
each a 72-byte little-endian integer.

Versions 2 (Milan and Genoa firmware before 1.55), 3 (adds the CPUID family, model and
stepping at ``0x188``) and 5 (adds the launch and current mitigation vectors) share every
field this module reads; version 4 was never issued. Anything else is refused: a field's
meaning is only known for the versions listed.

Invariant: :func:`parse_report` either returns a report whose every field was read from
a buffer of exactly :data:`REPORT_SIZE` bytes with a known version and a known signature
algorithm, or raises :class:`~weightvault.errors.EvidenceError` with a ``snp_*`` code.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from weightvault.errors import EvidenceError

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "GuestPolicy",
    "Report",
    "TcbVersion",
    "parse_report",
]

REPORT_SIZE: Final = 0x4A0
SIGNED_SIZE: Final = 0x2A0
VERSIONS: Final = frozenset({2, 3, 5})
SIG_ALGO_ECDSA_P384_SHA384: Final = 1
_COMPONENT: Final = 72  # bytes of R and of S, little-endian

#: SIGNING_KEY (bits 2..4 of the flags word at 0x48).
SIGNING_KEYS: Final = {0: "vcek", 1: "vlek", 7: "none"}


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """The security patch levels of one TCB_VERSION word.

    Milan and Genoa (CPUID family 19h) lay the 64-bit word out as boot loader, TEE,
    four reserved bytes, SNP, microcode; Turin (family 1Ah) as FMC, boot loader, TEE,
    SNP, three reserved bytes, microcode.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: bytes, *, turin: bool) -> TcbVersion:
        if len(raw) != 8:
            raise ValueError("a TCB_VERSION is 8 bytes")
        if turin:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def at_least(self, minimum: TcbVersion) -> bool:
        """Every component is at or above ``minimum``'s (FMC only where both have one)."""
        fmc_ok = self.fmc is None or minimum.fmc is None or self.fmc >= minimum.fmc
        return (
            fmc_ok
            and self.bootloader >= minimum.bootloader
            and self.tee >= minimum.tee
            and self.snp >= minimum.snp
            and self.microcode >= minimum.microcode
        )

    def as_claims(self) -> dict[str, int]:
        claims = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            claims["fmc"] = self.fmc
        return claims


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest policy the guest owner set at launch (POLICY, 0x08)."""

    raw: int

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def smt(self) -> bool:
        """Simultaneous multithreading may be enabled on the host."""
        return bool(self.raw >> 16 & 1)

    @property
    def migrate_ma(self) -> bool:
        """A migration agent may be associated with the guest (it can read guest memory)."""
        return bool(self.raw >> 18 & 1)

    @property
    def debug(self) -> bool:
        """The hypervisor may debug the guest, and so read and write its memory."""
        return bool(self.raw >> 19 & 1)

    @property
    def single_socket(self) -> bool:
        return bool(self.raw >> 20 & 1)


@dataclass(frozen=True, slots=True)
class Report:
    """The fields of a report that weightvault appraises, and the bytes its signature covers."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signing_key: str
    mask_chip_id: bool
    current_tcb: TcbVersion
    reported_tcb: TcbVersion
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    platform_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    chip_id: bytes
    cpuid: tuple[int, int, int] | None
    signed: bytes
    signature_r: int
    signature_s: int

    @property
    def turin(self) -> bool:
        return self.cpuid is not None and self.cpuid[0] == 0x1A


def _cpuid(raw: bytes, version: int) -> tuple[int, int, int] | None:
    if version < 3:
        return None
    return raw[0x188], raw[0x189], raw[0x18A]


def parse_report(raw: bytes) -> Report:
    """Decode one attestation report.

    Raises:
        EvidenceError: ``snp_report_size`` (not exactly 1184 bytes), ``snp_report_version``
            (a version not in 2, 3, 5), ``snp_signature_algorithm`` (not ECDSA P-384 with
            SHA-384), ``snp_signing_key`` (a reserved SIGNING_KEY value) or
            ``snp_signature_format`` (reserved bytes of the signature not zero).
    """
    if len(raw) != REPORT_SIZE:
        raise EvidenceError(f"snp_report_size: an SEV-SNP report is {REPORT_SIZE} bytes, not {len(raw)}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version not in VERSIONS:
        raise EvidenceError(f"snp_report_version: report version {version} is not one of {sorted(VERSIONS)}")
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x30)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceError(f"snp_signature_algorithm: algorithm {sig_algo} is not ECDSA P-384 with SHA-384")
    (flags,) = struct.unpack_from("<I", raw, 0x48)
    signing_key = SIGNING_KEYS.get(flags >> 2 & 0b111)
    if signing_key is None:
        raise EvidenceError(f"snp_signing_key: reserved SIGNING_KEY value {flags >> 2 & 0b111}")
    signature = raw[SIGNED_SIZE:]
    if any(signature[2 * _COMPONENT :]):
        raise EvidenceError("snp_signature_format: the signature's reserved bytes are not zero")
    cpuid = _cpuid(raw, version)
    turin = cpuid is not None and cpuid[0] == 0x1A
    (platform_info,) = struct.unpack_from("<Q", raw, 0x40)

    def tcb(offset: int) -> TcbVersion:
        return TcbVersion.decode(raw[offset : offset + 8], turin=turin)

    return Report(
        version=version,
        guest_svn=guest_svn,
        policy=GuestPolicy(policy),
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signing_key=signing_key,
        mask_chip_id=bool(flags >> 1 & 1),
        current_tcb=tcb(0x38),
        reported_tcb=tcb(0x180),
        committed_tcb=tcb(0x1E0),
        launch_tcb=tcb(0x1F0),
        platform_info=platform_info,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        chip_id=raw[0x1A0:0x1E0],
        cpuid=cpuid,
        signed=raw[:SIGNED_SIZE],
        signature_r=int.from_bytes(signature[:_COMPONENT], "little"),
        signature_s=int.from_bytes(signature[_COMPONENT : 2 * _COMPONENT], "little"),
    )
