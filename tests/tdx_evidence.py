"""TDX evidence made under test roots, from the real quote in tests/vectors/tdx.

Intel's DCAP structures are kept as the real quote and collateral have them (the TD report,
the QE report and its authentication data, the PCK certificate's SGX extensions, the TCB
info and QE identity documents); every key and signature is replaced: a test root and PCK
Platform CA issue a PCK certificate carrying the real one's extensions, the PCK key signs
the QE report, which binds a fresh attestation key, which signs the quote; a test TCB
signing key signs the TCB info and QE identity (their dates moved around the time the platform is made for), and
the root and the Platform CA sign empty CRLs. dcap-qvl then verifies the made quote with
the test root (``root_ca``), so the TD report's fields (REPORT_DATA, TD_ATTRIBUTES, MRTD)
can be set to make each of the tdx verifier's own checks fail on purpose.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.helpers import make_crl

VECTORS = Path(__file__).parent / "vectors" / "tdx"
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
_HEADER_AND_BODY = 48 + 584
_TD_ATTRIBUTES = 48 + 120
_MR_TD = 48 + 136
_REPORT_DATA = 48 + 520
_SGX_EXTENSIONS = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _public_raw(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]


def _cert(
    at: datetime.datetime,
    template: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(issuer.subject if issuer is not None else template.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - datetime.timedelta(days=365))
        .not_valid_after(at + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if issuer is not None:
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(authority, critical=False)
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _crl(
    at: datetime.datetime, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...] = ()
) -> str:
    made = make_crl(issuer, key, revoked, at=at, hash_name="sha256", numbered=True)
    return made.public_bytes(serialization.Encoding.DER).hex()


def _redate(document: str, at: datetime.datetime) -> str:
    issued = (at - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    due = (at + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = re.sub(r'"issueDate":"[^"]*"', f'"issueDate":"{issued}"', document, count=1)
    return re.sub(r'"nextUpdate":"[^"]*"', f'"nextUpdate":"{due}"', document, count=1)


@dataclass
class TdxPlatform:
    """Intel's TDX trust chain, remade under test keys around the real quote's platform, valid around ``at``."""

    at: datetime.datetime = NOW
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    pck_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    tcb_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.real = (VECTORS / "tdx_quote").read_bytes()
        self.real_collateral = json.loads((VECTORS / "tdx_quote_collateral.json").read_text())
        qe_auth = struct.unpack_from("<H", self.real, 770 + 384 + 64)[0]
        self._qe_auth_end = 770 + 384 + 64 + 2 + qe_auth
        kind, size = struct.unpack_from("<HI", self.real, self._qe_auth_end)
        assert kind == 5
        self._trailer = self.real[self._qe_auth_end + 6 + size :]
        real_pck, real_ca, real_root = x509.load_pem_x509_certificates(
            self.real[self._qe_auth_end + 6 : self._qe_auth_end + 6 + size].rstrip(b"\0")
        )
        real_tcb_signer = x509.load_pem_x509_certificates(self.real_collateral["tcb_info_issuer_chain"].encode())[0]
        at = self.at
        self.root = _cert(at, real_root, self.root_key, None, self.root_key, ca=True)
        self.ca = _cert(at, real_ca, self.ca_key, self.root, self.root_key, ca=True)
        sgx = real_pck.extensions.get_extension_for_oid(_SGX_EXTENSIONS)
        self.pck = _cert(at, real_pck, self.pck_key, self.ca, self.ca_key, ca=False, extensions=(sgx,))
        self.tcb_signer = _cert(at, real_tcb_signer, self.tcb_key, self.root, self.root_key, ca=False)

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def quote(
        self,
        report_data: bytes,
        *,
        debug: bool = False,
        mrtd: bytes | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A version-4 quote whose REPORT_DATA is ``report_data`` and 32 zero bytes."""
        quote = bytearray(self.real[:_HEADER_AND_BODY])
        quote[_REPORT_DATA : _REPORT_DATA + 64] = report_data.ljust(64, b"\0")
        if debug:
            quote[_TD_ATTRIBUTES] |= 0x01
        if mrtd is not None:
            quote[_MR_TD : _MR_TD + 48] = mrtd
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        qe_auth = self.real[770 + 384 + 64 + 2 : self._qe_auth_end]
        qe_report = bytearray(self.real[770 : 770 + 384])
        qe_report[320:384] = hashlib.sha256(_public_raw(attestation_key) + qe_auth).digest() + bytes(32)
        chain = _pem(self.pck, self.ca, self.root).encode()
        certification = (
            bytes(qe_report)
            + _raw_signature(self.pck_key, bytes(qe_report))
            + struct.pack("<H", len(qe_auth))
            + qe_auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        signed = bytes(quote)
        signature_data = (
            _raw_signature(signer or attestation_key, signed)
            + _public_raw(attestation_key)
            + struct.pack("<HI", 6, len(certification))
            + certification
        )
        return signed + struct.pack("<I", len(signature_data)) + signature_data + self._trailer

    def collateral(self, *, revoked_pck: bool = False) -> str:
        """The collateral (dcap-qvl's QuoteCollateralV3 JSON) for the made platform, valid around ``at``."""
        tcb_info = _redate(self.real_collateral["tcb_info"], self.at)
        qe_identity = _redate(self.real_collateral["qe_identity"], self.at)
        return json.dumps(
            {
                "pck_crl_issuer_chain": _pem(self.ca, self.root),
                "root_ca_crl": _crl(self.at, self.root, self.root_key),
                "pck_crl": _crl(self.at, self.ca, self.ca_key, (self.pck.serial_number,) if revoked_pck else ()),
                "tcb_info_issuer_chain": _pem(self.tcb_signer, self.root),
                "tcb_info": tcb_info,
                "tcb_info_signature": _raw_signature(self.tcb_key, tcb_info.encode()).hex(),
                "qe_identity_issuer_chain": _pem(self.tcb_signer, self.root),
                "qe_identity": qe_identity,
                "qe_identity_signature": _raw_signature(self.tcb_key, qe_identity.encode()).hex(),
            }
        )
