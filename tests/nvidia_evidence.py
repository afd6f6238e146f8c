"""NVIDIA GPU evidence made under test roots: an NVIDIA-shaped device hierarchy, SPDM reports signed by
each GPU's attestation key, and RIMs signed (XML-DSig, as NVIDIA signs them) under a test RIM root.

The device hierarchy mirrors NVIDIA's (a self-signed identity CA, a product intermediate,
each chip's boot-ROM certificate, and the attestation key's leaf carrying the DICE FWID
extension); reports follow the SPDM 1.1 layout of weightvault.attestation.nvidia.report,
so every failure path can be made on purpose.
"""

from __future__ import annotations

import base64
import datetime
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.helpers import make_crl

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
DRIVER = "550.90.07"
VBIOS = bytes([0x00, 0x9F, 0x00, 0x96, 0x01, 0x00, 0x00, 0x00])  # 96.00.9F.00.01
VBIOS_VERSION = "96.00.9F.00.01"
#: Indices the made driver RIM measures, and the made VBIOS RIM's.
DRIVER_INDICES = tuple(range(20, 30))
VBIOS_INDICES = tuple(range(10))
_SHA384_OID = bytes.fromhex("0609608648016503040202")


def _name(common: str, org: str = "NVIDIA Corporation (test)") -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: Sequence[x509.ExtensionType] = (),
    not_after: datetime.datetime | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=365))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=3650))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + content


def dice_fwid_extension(key: ec.EllipticCurvePrivateKey, fwid: bytes) -> x509.UnrecognizedExtension:
    """NVIDIA's shape of the DICE extension: SEQUENCE { INTEGER 1, SubjectPublicKeyInfo, SEQUENCE { sha384, FWID } }."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = _der(0x02, b"\x01") + spki + _der(0x30, _SHA384_OID + _der(0x04, fwid))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), _der(0x30, body))


@dataclass
class DeviceRoots:
    """A test device identity root and the product intermediate it issued."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    ica_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def __post_init__(self) -> None:
        self.root = _cert("Test Device Identity CA", self.root_key, None, self.root_key, ca=True)
        self.ica = _cert("Test GH100 Identity", self.ica_key, self.root, self.root_key, ca=True)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def crl(self, revoked: Sequence[int], *, next_update: datetime.datetime | None = None) -> bytes:
        """A CRL of the product intermediate (it revokes boot-ROM certificates)."""
        made = make_crl(self.ica, self.ica_key, revoked, at=NOW, next_update=next_update)
        return made.public_bytes(serialization.Encoding.PEM)


def golden(index: int) -> bytes:
    """The made RIMs' golden value at ``index`` (what a made GPU measures unless told otherwise)."""
    return bytes([index]) * 48


@dataclass
class Gpu:
    """One made GPU: its boot-ROM and attestation certificates under ``roots``, and its measurements."""

    roots: DeviceRoots
    fwid: bytes = b"\x5a" * 48
    leaf_not_after: datetime.datetime | None = None

    def __post_init__(self) -> None:
        self.brom_key = ec.generate_private_key(ec.SECP384R1())
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.brom = _cert("GH100 A01 GSP BROM", self.brom_key, self.roots.ica, self.roots.ica_key, ca=True)
        self.leaf = _cert(
            "GH100 A01 GSP FMC LF",
            self.key,
            self.brom,
            self.brom_key,
            ca=False,
            extensions=[dice_fwid_extension(self.key, self.fwid)],
            not_after=self.leaf_not_after,
        )

    @property
    def ueid(self) -> str:
        return str(self.leaf.serial_number)

    def chain_pem(self, *, root: bool = True) -> bytes:
        certs = [self.leaf, self.brom, self.roots.ica] + ([self.roots.root] if root else [])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def report(
        self,
        nonce: bytes,
        *,
        measurements: Mapping[int, bytes] | None = None,
        driver: str = DRIVER,
        vbios: bytes = VBIOS,
        fwid: bytes | None = None,
        version: int = 0x11,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """request || response, signed; every field can be set to make one check fail."""
        values = {i: golden(i) for i in (*VBIOS_INDICES, *DRIVER_INDICES)}
        values.update(measurements or {})
        request = bytes([version, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
        record = b""
        for index in sorted(values):
            value = values[index]
            block = bytes([0x01]) + struct.pack("<H", len(value)) + value
            record += bytes([index + 1, 0x01]) + struct.pack("<H", len(block)) + block
        opaque = b""
        for kind, value in (
            (3, driver.encode() + b"\0"),
            (6, vbios),
            (17, b"1010\0"),
            (18, b"0200\0"),
            (20, self.fwid if fwid is None else fwid),
        ):
            opaque += struct.pack("<HH", kind, len(value)) + value
        response = (
            bytes([version, 0x60, 0x00, 0x00, len(values)])
            + len(record).to_bytes(3, "little")
            + record
            + b"\x33" * 32
            + struct.pack("<H", len(opaque))
            + opaque
        )
        der = (signer or self.key).sign(request + response, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def entry(self, nonce: bytes, *, cc_mode: str = "on", **report: Any) -> dict[str, str]:
        return {
            "report": base64.b64encode(self.report(nonce, **report)).decode(),
            "certificates": base64.b64encode(self.chain_pem()).decode(),
            "cc_mode": cc_mode,
        }


def gpu_evidence(gpus: Sequence[Gpu], nonce: bytes, **report: Any) -> dict[str, Any]:
    return {"type": "nvidia-gpu", "gpus": [g.entry(nonce, **report) for g in gpus]}


class MadeGpus:
    """A GPU attester whose GPUs are made ones (``gpu_evidence`` of the composite attester's protocol)."""

    def __init__(self, gpus: Sequence[Gpu], **report: Any) -> None:
        self.gpus, self.options = list(gpus), report

    def gpu_evidence(self, nonce: bytes) -> dict[str, Any]:
        return gpu_evidence(self.gpus, nonce, **self.options)

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return self.gpu_evidence(report_data)


@dataclass
class RimSigner:
    """A test RIM root and the signer it issued; signs SWID tags the way NVIDIA does."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    not_after: datetime.datetime | None = None

    def __post_init__(self) -> None:
        self.root = _cert("Test CoRIM signing Root CA", self.root_key, None, self.root_key, ca=True)
        self.signer = _cert("Test RIM Signer", self.key, self.root, self.root_key, ca=False, not_after=self.not_after)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def rim(
        self, version: str, indices: Sequence[int], *, values: Mapping[int, Sequence[bytes]] | None = None
    ) -> bytes:
        """A signed RIM measuring ``indices`` (golden values by default), every other index inactive."""
        from lxml import etree
        from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
        from signxml.signer import XMLSigner

        ns = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
        hash_ns = "http://www.w3.org/2001/04/xmlenc#sha384"
        root = etree.Element(f"{{{ns}}}SoftwareIdentity", nsmap={None: ns, "ns2": hash_ns}, name="GH100")
        etree.SubElement(root, f"{{{ns}}}Meta", colloquialVersion=version, product="GH100")
        payload = etree.SubElement(root, f"{{{ns}}}Payload")
        for index in range(64):
            alternatives = list((values or {}).get(index, [golden(index)]))
            attrs = {
                "type": "Measurement",
                "index": str(index),
                "active": "True" if index in indices else "False",
                "alternatives": str(len(alternatives)),
            }
            node = etree.SubElement(payload, f"{{{ns}}}Resource", attrs)
            for n, value in enumerate(alternatives):
                node.set(f"{{{hash_ns}}}Hash{n}", value.hex())
        signer = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        )
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.signer, self.root)]
        signed = signer.sign(root, key=key_pem, cert=chain)
        return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def verifier_section(
    tmp: Path,
    roots: DeviceRoots,
    rims: RimSigner,
    *,
    driver: str = DRIVER,
    vbios: str = VBIOS_VERSION,
    extra: str = "",
) -> str:
    """A ``[verifiers.nvidia_gpu]`` table over files written to ``tmp``."""
    (tmp / "device_root.pem").write_bytes(roots.root_pem)
    (tmp / "rim_root.pem").write_bytes(rims.root_pem)
    (tmp / "driver.swidtag").write_bytes(rims.rim(driver, DRIVER_INDICES))
    (tmp / "vbios.swidtag").write_bytes(rims.rim(vbios, VBIOS_INDICES))
    return (
        "[verifiers.nvidia_gpu]\n"
        f'device_roots = ["{tmp / "device_root.pem"}"]\nrim_roots = ["{tmp / "rim_root.pem"}"]\n'
        f'driver_rims = ["{tmp / "driver.swidtag"}"]\nvbios_rims = ["{tmp / "vbios.swidtag"}"]\n'
        f"test_roots = true\n{extra}"
    )
