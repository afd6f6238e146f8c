"""SEV-SNP evidence made under test roots: an AMD-shaped key hierarchy and reports signed by its VCEK.

The hierarchy mirrors AMD's (an RSA ARK, self-signed with RSASSA-PSS/SHA-384; an ASK or
ASVK it issues; an ECDSA P-384 VCEK carrying AMD's TCB and hardware-id extensions), with
2048-bit RSA keys to keep the tests quick. Reports follow the firmware ABI's layout
(weightvault.attestation.snp.report), so every failure path can be made on purpose.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.helpers import make_crl

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
_AMD = "1.3.6.1.4.1.3704.1"


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices (test)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


@dataclass
class Hierarchy:
    """A product's ARK and ASK (or ASVK), as a KDS cert_chain file, plus a CRL maker."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate

    @property
    def chain_pem(self) -> bytes:
        return self.ask.public_bytes(serialization.Encoding.PEM) + self.ark.public_bytes(serialization.Encoding.PEM)

    def crl(self, revoked: list[int], *, next_update: datetime.datetime | None = None, signer: Any = None) -> bytes:
        made = make_crl(self.ark, signer or self.ark_key, revoked, at=NOW, next_update=next_update, rsa_padding=PSS)
        return made.public_bytes(serialization.Encoding.DER)


def hierarchy(product: str = "Milan", *, vlek: bool = False) -> Hierarchy:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    start, end = NOW - datetime.timedelta(days=365), NOW + datetime.timedelta(days=3650)
    ark = (
        x509.CertificateBuilder()
        .subject_name(_name(f"ARK-{product}"))
        .issuer_name(_name(f"ARK-{product}"))
        .public_key(ark_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ark_key, hashes.SHA384(), rsa_padding=PSS)
    )
    ask = (
        x509.CertificateBuilder()
        .subject_name(_name(f"SEV-VLEK-{product}" if vlek else f"SEV-{product}"))
        .issuer_name(ark.subject)
        .public_key(ask_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ark_key, hashes.SHA384(), rsa_padding=PSS)
    )
    return Hierarchy(product, ark_key, ark, ask_key, ask)


@dataclass
class Tcb:
    bootloader: int = 3
    tee: int = 0
    snp: int = 8
    microcode: int = 115

    def encode(self) -> bytes:  # the Milan and Genoa layout
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])


@dataclass
class Chip:
    """A chip's VCEK (or a VLEK) for one TCB, under ``issuer``."""

    issuer: Hierarchy
    tcb: Tcb = field(default_factory=Tcb)
    chip_id: bytes = bytes(range(64))
    not_after: datetime.datetime = NOW + datetime.timedelta(days=365 * 7)
    vlek: bool = False

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VLEK" if self.vlek else "SEV-VCEK"))
            .issuer_name(self.issuer.ask.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=30))
            .not_valid_after(self.not_after)
        )
        levels = {"3.1": self.tcb.bootloader, "3.2": self.tcb.tee, "3.3": self.tcb.snp, "3.8": self.tcb.microcode}
        for suffix, level in levels.items():
            oid = x509.ObjectIdentifier(f"{_AMD}.{suffix}")
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, _der_int(level)), critical=False)
        product = x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{_AMD}.2"), b"\x16\x08Milan-B0")
        builder = builder.add_extension(product, critical=False)
        if not self.vlek:
            hwid = x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{_AMD}.4"), self.chip_id)
            builder = builder.add_extension(hwid, critical=False)
        self.cert = builder.sign(self.issuer.ask_key, hashes.SHA384(), rsa_padding=PSS)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def report(
        self,
        report_data: bytes,
        *,
        measurement: bytes = b"\x11" * 48,
        policy: int = 0x30000,  # ABI 0.0, SMT allowed, the reserved bit; no debug, no migration agent
        vmpl: int = 0,
        version: int = 3,
        tcb: Tcb | None = None,
        chip_id: bytes | None = None,
        sig_algo: int = 1,
        signing_key: int | None = None,
        mask_chip_id: bool = False,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A signed report; every field can be set to make one check fail."""
        raw = bytearray(0x4A0)
        reported = (tcb or self.tcb).encode()
        key_bits = (1 if self.vlek else 0) if signing_key is None else signing_key
        struct.pack_into("<IIQ", raw, 0, version, 0, policy)
        struct.pack_into("<II", raw, 0x30, vmpl, sig_algo)
        raw[0x38:0x40] = reported
        struct.pack_into("<I", raw, 0x48, key_bits << 2 | (2 if mask_chip_id else 0))
        raw[0x50 : 0x50 + len(report_data)] = report_data
        raw[0x90:0xC0] = measurement
        raw[0x180:0x188] = reported
        if version >= 3:
            raw[0x188:0x18B] = bytes([0x19, 0x01, 0x01])
        raw[0x1A0:0x1E0] = bytes(64) if mask_chip_id else (self.chip_id if chip_id is None else chip_id)
        raw[0x1E0:0x1E8] = reported
        raw[0x1F0:0x1F8] = reported
        der = (signer or self.key).sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        raw[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
        raw[0x2A0 + 72 : 0x2A0 + 144] = s.to_bytes(72, "little")
        return bytes(raw)


def evidence(report: bytes, endorsement: bytes) -> dict[str, str]:
    import base64

    return {
        "type": "sev-snp",
        "report": base64.b64encode(report).decode(),
        "endorsement": base64.b64encode(endorsement).decode(),
    }
