"""NVIDIA's device identity hierarchy and signed reference integrity manifests (RIMs), with
pyca/cryptography and signxml.

Two pinned roots, both configured offline (the broker never fetches anything while it verifies):

* the **device identity root** (``NVIDIA Device Identity CA``). Each GPU presents its chain,
  leaf first: the attestation key's certificate (``GH100 A01 GSP FMC LF``), the chip's
  boot-ROM certificate, NVIDIA's provisioning intermediates, and the root. Every link is
  checked here (signature, CA constraints, validity at the time of verification, the
  optional CRLs); the leaf's key is ECDSA P-384 and signs the report
  (:func:`verify_report_signature`). Its TCG DICE extension (``2.23.133.5.4.1``) names the
  FWID of the firmware that holds the key, which the verifier compares with the report.
* the **RIM root** (``NVIDIA CoRIM signing Root CA``). A RIM is a TCG SWID tag (XML) with an
  enveloped XML-DSig signature (ECDSA P-384, SHA-384, C14N 1.1) whose KeyInfo carries the
  signer's chain. :func:`verify_rim` checks the chain to the pinned root and the signature
  (signxml, which canonicalises and checks the digest and signature with pyca/cryptography),
  and returns only the signed element, from which the golden measurements are read.

Every failure raises :class:`~weightvault.errors.EvidenceError` with a ``gpu_*`` code (a
device chain) or :class:`~weightvault.errors.ConfigError` (a RIM or root in configuration).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from weightvault.crypto.x509 import common_name, is_ca, issued_by, load_crl, verify_ecdsa_sha384
from weightvault.errors import ConfigError, EvidenceError

__all__ = [
    "MAX_CHAIN_BYTES",
    "MAX_RIM_BYTES",
    "NVIDIA_DEVICE_ROOT_SHA256",
    "NVIDIA_RIM_ROOT_SHA256",
    "DeviceTrust",
    "GpuIdentity",
    "VerifiedRim",
    "load_root",
    "verify_report_signature",
    "verify_rim",
]

MAX_CHAIN_BYTES: Final = 16 << 10
MAX_RIM_BYTES: Final = 1 << 20
_MAX_CHAIN_CERTS: Final = 8
_LINK_CACHE: Final = 4096

#: SHA-256 of the DER of NVIDIA's roots as nvtrust ships them
#: (guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/certs/, commit 0281730).
NVIDIA_DEVICE_ROOT_SHA256: Final = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
NVIDIA_RIM_ROOT_SHA256: Final = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"

OID_DICE_FWID: Final = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OID_DER: Final = bytes.fromhex("0609608648016503040202")
_DSIG: Final = "{http://www.w3.org/2000/09/xmldsig#}"


def load_root(data: bytes, source: str) -> x509.Certificate:
    """A pinned root (PEM or DER), which must be self-signed.

    Raises:
        ConfigError: not a certificate, or not self-signed.
    """
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"{source}: not a self-signed root certificate ({exc})") from exc
    return cert


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _within(cert: x509.Certificate, moment: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """A GPU's attestation key, verified up to the pinned root.

    ``ueid``: the leaf certificate's serial number in decimal, which NVIDIA's verifiers
    report as the device's unique id; ``hwmodel``: the common name of the chip's boot-ROM
    certificate (``GH100 A01 GSP BROM``); ``fwid``: the FWID the leaf's DICE extension names.
    """

    public_key: ec.EllipticCurvePublicKey
    ueid: str
    hwmodel: str
    fwid: bytes | None


def _tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """The DER TLV at ``offset``: (tag, content, offset after it); definite lengths only."""
    if len(data) < offset + 2:
        raise ValueError("truncated DER")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 3 or len(data) < offset + count:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    content = data[offset : offset + length]
    if len(content) != length:
        raise ValueError("truncated DER")
    return tag, content, offset + length


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The top-level DER TLVs of ``data`` as (tag, content)."""
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        tag, content, offset = _tlv(data, offset)
        items.append((tag, content))
    return items


def _dice_fwid(cert: x509.Certificate) -> bytes | None:
    """The SHA-384 FWID in the leaf's DICE extension (a SEQUENCE holding ``{sha384, OCTET STRING}``)."""
    try:
        value = cert.extensions.get_extension_for_oid(OID_DICE_FWID).value
    except x509.ExtensionNotFound:
        return None
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    try:
        (outer,) = _der_items(value.value)
        if outer[0] != 0x30:
            raise ValueError("not a SEQUENCE")
        for tag, content in _der_items(outer[1]):
            if tag != 0x30 or not content.startswith(_SHA384_OID_DER):
                continue
            inner = _der_items(content[len(_SHA384_OID_DER) :])
            if len(inner) == 1 and inner[0][0] == 0x04 and len(inner[0][1]) == 48:
                return inner[0][1]
    except ValueError as exc:
        raise EvidenceError(
            f"gpu_certificate: the attestation certificate's FWID extension is malformed ({exc})"
        ) from exc
    return None


def _load_chain(data: bytes) -> list[x509.Certificate]:
    if len(data) > MAX_CHAIN_BYTES:
        raise EvidenceError(f"gpu_certificate: the certificate chain is larger than {MAX_CHAIN_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data) if data.lstrip().startswith(b"-----") else _der_chain(data)
    except ValueError as exc:
        raise EvidenceError("gpu_certificate: the certificate chain does not parse") from exc
    if not 1 <= len(certs) <= _MAX_CHAIN_CERTS:
        raise EvidenceError(f"gpu_certificate: a chain holds 1 to {_MAX_CHAIN_CERTS} certificates")
    return certs


def _der_chain(data: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates (NVML's form)."""
    certs = []
    offset = 0
    while offset < len(data):
        _tag, _content, end = _tlv(data, offset)
        certs.append(x509.load_der_x509_certificate(data[offset:end]))
        offset = end
    return certs


class DeviceTrust:
    """The pinned device identity root(s), and optionally CRLs of NVIDIA's intermediates.

    Links of a chain whose signature verified are remembered (by the SHA-256 of both
    certificates' DER, at most :data:`_LINK_CACHE` of them): whether a certificate's
    signature verifies under another's key depends on those bytes alone, so a remembered
    link is as good as a recomputed one. Validity periods, CA constraints and revocation
    are still checked on every appraisal; what is saved is the ECDSA verifications of
    NVIDIA's shared intermediates and of GPUs that attest again.
    """

    def __init__(self, roots: Iterable[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = ()) -> None:
        self.roots = tuple(roots)
        if not self.roots:
            raise ConfigError("the nvidia-gpu verifier needs a pinned device identity root (device_roots)")
        self.crls = tuple(crls)
        self._links: dict[tuple[bytes, bytes], None] = {}
        self._lock = threading.Lock()

    def _verified_link(self, child: x509.Certificate, parent: x509.Certificate) -> bool:
        key = (child.fingerprint(hashes.SHA256()), parent.fingerprint(hashes.SHA256()))
        with self._lock:
            if key in self._links:
                return True
        if not issued_by(child, parent):
            return False
        with self._lock:
            if len(self._links) >= _LINK_CACHE:
                self._links.pop(next(iter(self._links)))  # the oldest: insertion order
            self._links[key] = None
        return True

    @staticmethod
    def parse_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
        try:
            return load_crl(data)
        except ValueError as exc:
            raise ConfigError(f"{source}: the CRL does not parse ({exc})") from exc

    def endorse(self, chain_bytes: bytes, now: int) -> GpuIdentity:
        """Verify a GPU's chain (leaf first) up to a pinned root at ``now``.

        Raises:
            EvidenceError: ``gpu_certificate`` (unparseable, a CA as the leaf, wrong key type), ``gpu_chain`` (a
                link that does not verify, or no pinned root at the top), ``gpu_certificate_expired``,
                ``gpu_certificate_revoked``, ``gpu_crl_stale``.
        """
        certs = _load_chain(chain_bytes)
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        root = next((r for r in self.roots if certs[-1] == r), None)
        if root is None:
            root = next((r for r in self.roots if self._verified_link(certs[-1], r)), None)
            if root is None:
                raise EvidenceError("gpu_chain: the GPU's certificate chain does not end at a pinned NVIDIA root")
            certs.append(root)
        for child, parent in itertools.pairwise(certs):
            if not is_ca(parent) or not self._verified_link(child, parent):
                raise EvidenceError(
                    f"gpu_chain: {common_name(child.subject)!r} is not issued by the next certificate of the chain"
                )
        for cert in certs:
            if not _within(cert, moment):
                raise EvidenceError(
                    f"gpu_certificate_expired: {common_name(cert.subject)!r} is not valid at {moment.isoformat()}"
                )
        self._check_revocation(certs, moment)
        leaf = certs[0]
        if is_ca(leaf):
            raise EvidenceError("gpu_certificate: the first certificate of the chain is a CA, not an attestation key")
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise EvidenceError("gpu_certificate: the attestation key is not ECDSA P-384")
        hwmodel = common_name(certs[1].subject) if len(certs) > 1 else ""
        return GpuIdentity(key, str(leaf.serial_number), hwmodel, _dice_fwid(leaf))

    def _check_revocation(self, certs: Sequence[x509.Certificate], moment: datetime.datetime) -> None:
        for cert, issuer in itertools.pairwise(certs):
            for crl in self.crls:
                if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    continue
                next_update = crl.next_update_utc
                if next_update is None or next_update < moment:
                    who = common_name(issuer.subject)
                    raise EvidenceError(f"gpu_crl_stale: the CRL of {who!r} is past its next update; refresh it")
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise EvidenceError(f"gpu_certificate_revoked: {common_name(cert.subject)!r} is revoked")


def verify_report_signature(key: ec.EllipticCurvePublicKey, signature: bytes, signed: bytes) -> bool:
    """Whether ``signature`` (R || S, 48 bytes each) is an ECDSA P-384 / SHA-384 signature of ``signed``."""
    if len(signature) != 96:
        return False
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    return verify_ecdsa_sha384(key, r, s, signed)


@dataclass(frozen=True, slots=True)
class VerifiedRim:
    """A RIM whose signature and chain verified: the signed SWID element and when its chain is valid."""

    signed: Any  # the lxml element signxml returns: only what the signature covers
    not_before: datetime.datetime
    not_after: datetime.datetime
    signer: str


def verify_rim(data: bytes, roots: Sequence[x509.Certificate], source: str) -> VerifiedRim:
    """Verify a RIM's enveloped signature and its signer's chain to a pinned RIM root.

    Time is not checked here: the chain's validity window is returned, and the verifier
    compares it with the time of each appraisal (a RIM is configured once, used for years).

    Raises:
        ConfigError: too large, not XML, no signer chain, a chain that does not reach a
            pinned root, a signature or digest that does not verify, or an algorithm other
            than ECDSA P-384 with SHA-384.
    """
    # signxml (and lxml) are imported here: only a broker that configures this verifier needs them.
    try:
        from lxml import etree
        from signxml.algorithms import DigestAlgorithm, SignatureMethod
        from signxml.exceptions import SignXMLException
        from signxml.verifier import SignatureConfiguration, XMLVerifier
    except ImportError as exc:  # pragma: no cover - exercised by tests/wheel in a core-only venv
        raise ConfigError("the nvidia-gpu verifier needs signxml: pip install 'weightvault[nvidia]'") from exc
    if len(data) > MAX_RIM_BYTES:
        raise ConfigError(f"{source}: a RIM is at most {MAX_RIM_BYTES} bytes")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=False)
    try:
        doc = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ConfigError(f"{source}: not XML ({exc})") from exc
    try:
        certs = [x509.load_der_x509_certificate(_b64(node.text or "")) for node in doc.iter(f"{_DSIG}X509Certificate")]
    except ValueError as exc:
        raise ConfigError(f"{source}: a certificate in its KeyInfo does not parse") from exc
    if not 1 <= len(certs) <= _MAX_CHAIN_CERTS:
        raise ConfigError(f"{source}: the signature carries no signer chain")
    chain = [c for c in certs if c not in roots]
    top = chain[-1] if chain else None
    root = next((r for r in roots if top is not None and issued_by(top, r)), None)
    links_ok = all(issued_by(c, p) and is_ca(p) for c, p in itertools.pairwise(chain))
    if top is None or root is None or not links_ok:
        raise ConfigError(f"{source}: the RIM's signer does not chain to a pinned NVIDIA RIM root")
    full = [*chain, root]
    not_before = max(c.not_valid_before_utc for c in full)
    not_after = min(c.not_valid_after_utc for c in full)
    if not_before > not_after:
        raise ConfigError(f"{source}: the RIM's signer chain has no common validity period")
    expect = SignatureConfiguration(
        require_x509=False,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=not_before,
    )
    leaf_pem = chain[0].public_bytes(Encoding.PEM).decode()
    try:
        result = XMLVerifier().verify(data, x509_cert=leaf_pem, expect_config=expect)
    except (SignXMLException, ValueError) as exc:
        raise ConfigError(f"{source}: the RIM's signature does not verify ({exc})") from exc
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None:
        raise ConfigError(f"{source}: the RIM signs nothing")
    return VerifiedRim(signed, not_before, not_after, common_name(chain[0].subject))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
