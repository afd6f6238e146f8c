"""AMD's key hierarchy for SEV-SNP (pinned ARK and ASK or ASVK; the chip's VCEK or the provider's VLEK),
and the report signature, with pyca/cryptography.

AMD's Key Distribution Service (KDS) publishes, per product (Milan, Genoa, Turin), a
``cert_chain`` file (the ASK, or for VLEKs the ASVK, then the self-signed ARK; both
RSA-4096 with RSASSA-PSS) and a CRL signed by the ARK. A VCEK is an ECDSA P-384
certificate that the ASK issues for one chip at one TCB; a VLEK is issued by the ASVK to
a cloud provider. The broker is given these files offline (configuration), never fetches
anything while it verifies, and checks:

1. the pinned chain itself at load: the ARK is self-signed, the ASK is issued by the ARK;
2. per report: the endorsement certificate (VCEK or VLEK) is issued by a pinned ASK/ASVK,
   every certificate of the chain is within its validity at the time of verification, and
   no certificate of the chain is on the product's CRL when one is configured (a CRL that
   is not signed by the ARK, or is past its next update, fails closed);
3. the endorsement's AMD extensions: its TCB levels (``1.3.6.1.4.1.3704.1.3.*``) and, for a
   VCEK, its hardware id (``1.3.6.1.4.1.3704.1.4``), which :mod:`.verifier` compares with the
   report.

Signatures are checked by pyca/cryptography (RSASSA-PSS, ECDSA); this module only walks
the hierarchy, reads AMD's extensions and checks the report's ECDSA P-384 signature
(:func:`verify_report_signature`); the report itself is decoded by
:mod:`weightvault.attestation.snp.report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning

from weightvault.crypto.x509 import common_name, issued_by, load_crl, verify_ecdsa_sha384
from weightvault.errors import ConfigError, EvidenceError

__all__ = [
    "AMD_ARK_SHA256",
    "MAX_CERT_BYTES",
    "Endorsement",
    "ProductChain",
    "SnpTrust",
    "load_certificate",
    "verify_report_signature",
]

MAX_CERT_BYTES: Final = 16 << 10

#: SHA-256 of the DER of AMD's ARK certificate per product, as AMD's KDS serves it (the same ARK
#: signs the VCEK and the VLEK chains). Copied from the chains Google's go-sev-guest pins
#: (verify/trust/ask_ark_*.pem, commit af1c107a); a configured chain whose ARK differs is
#: refused unless the configuration says it uses test roots.
AMD_ARK_SHA256: Final = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

_AMD = "1.3.6.1.4.1.3704.1"
OID_PRODUCT: Final = x509.ObjectIdentifier(f"{_AMD}.2")
OID_BOOTLOADER: Final = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_TEE: Final = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_SNP: Final = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_MICROCODE: Final = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_FMC: Final = x509.ObjectIdentifier(f"{_AMD}.3.9")
OID_HWID: Final = x509.ObjectIdentifier(f"{_AMD}.4")

_parse_lock = threading.Lock()


@contextlib.contextmanager
def _amd_serials() -> Iterator[None]:
    """Parse AMD's certificates: KDS issues VCEKs (and ASKs) whose serial number pyca/cryptography
    flags as not positive (RFC 5280 wants positive serials). That warning alone is silenced, under
    a lock because the warnings filters are process-wide."""
    with _parse_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parsed a serial number", CryptographyDeprecationWarning)
        yield


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """One DER or PEM certificate (AMD's serial numbers tolerated, see :func:`_amd_serials`).

    Raises:
        EvidenceError: ``snp_certificate`` when the bytes are not a certificate.
    """
    if len(data) > MAX_CERT_BYTES:
        raise EvidenceError(f"snp_certificate: {what} is larger than {MAX_CERT_BYTES} bytes")
    with _amd_serials():
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError as exc:
            raise EvidenceError(f"snp_certificate: {what} is not an X.509 certificate") from exc


def _der_small_int(raw: bytes) -> int:
    """A DER INTEGER of at most two content bytes, non-negative (AMD's SPL extensions)."""
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        raise ValueError("not a small DER INTEGER")
    if raw[2] & 0x80 or (raw[1] == 2 and raw[2] == 0 and not raw[3] & 0x80):
        raise ValueError("not a minimal non-negative DER INTEGER")
    return int.from_bytes(raw[2:], "big")


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


@dataclass(frozen=True, slots=True)
class Endorsement:
    """A verified VCEK or VLEK: its key, what it certifies, and where it chains."""

    kind: str  # "vcek" or "vlek"
    product: str
    public_key: ec.EllipticCurvePublicKey
    #: TCB levels the certificate names: bootloader, tee, snp, microcode (and fmc on Turin).
    levels: dict[str, int]
    hwid: bytes | None

    @classmethod
    def read(cls, cert: x509.Certificate, kind: str, product: str, *, turin: bool) -> Endorsement:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise EvidenceError(f"snp_certificate: the {kind.upper()} key is not ECDSA P-384")
        try:
            levels = {}
            for name, oid in (
                ("bootloader", OID_BOOTLOADER),
                ("tee", OID_TEE),
                ("snp", OID_SNP),
                ("microcode", OID_MICROCODE),
            ):
                raw = _extension(cert, oid)
                if raw is None:
                    raise ValueError(f"no {name} level")
                levels[name] = _der_small_int(raw)
            fmc_raw = _extension(cert, OID_FMC)
            fmc = _der_small_int(fmc_raw) if fmc_raw is not None else (0 if turin else None)
        except ValueError as exc:
            raise EvidenceError(f"snp_certificate: the {kind.upper()}'s TCB extensions are malformed ({exc})") from exc
        hwid = _extension(cert, OID_HWID)
        if hwid is not None and len(hwid) == 66 and hwid[:2] == b"\x04\x40":  # an OCTET STRING, if ever wrapped
            hwid = hwid[2:]
        if kind == "vcek" and (hwid is None or len(hwid) != 64):
            raise EvidenceError("snp_certificate: the VCEK has no 64-byte hardware id")
        if fmc is not None:
            levels["fmc"] = fmc
        return cls(kind, product, key, levels, hwid if kind == "vcek" else None)


@dataclass(frozen=True, slots=True)
class ProductChain:
    """One product's pinned ARK and its intermediate (ASK for VCEKs, ASVK for VLEKs).

    ``issues`` is what the intermediate signs, read from its name as AMD writes it
    (``SEV-<product>`` for an ASK, ``SEV-VLEK-<product>`` for an ASVK), so that a report
    naming a VCEK is never accepted under a VLEK's chain, or the reverse.
    """

    product: str
    ark: x509.Certificate
    intermediate: x509.Certificate
    issues: str
    crl: x509.CertificateRevocationList | None = None

    @property
    def is_amds(self) -> bool:
        """Whether the ARK is AMD's own for this product (:data:`AMD_ARK_SHA256`)."""
        return self.ark.fingerprint(hashes.SHA256()).hex() == AMD_ARK_SHA256.get(self.product)

    @classmethod
    def from_pem(cls, chain_pem: bytes, crl: bytes | None = None, *, source: str = "cert_chain") -> ProductChain:
        """A KDS ``cert_chain`` file (intermediate, then ARK), and optionally the product's CRL.

        Raises:
            ConfigError: not two certificates, an ARK that is not self-signed, an intermediate
                the ARK did not issue, or a CRL the ARK did not sign.
        """
        try:
            with _amd_serials():
                certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise ConfigError(f"{source}: not PEM certificates ({exc})") from exc
        if len(certs) != 2:
            raise ConfigError(f"{source}: a KDS cert_chain holds two certificates (ASK or ASVK, then ARK)")
        intermediate, ark = certs
        try:
            ark.verify_directly_issued_by(ark)
            intermediate.verify_directly_issued_by(ark)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: the ARK is not self-signed or did not issue the intermediate") from exc
        product = _product_of(ark)
        name = common_name(intermediate.subject)
        if name == f"SEV-VLEK-{product}":
            issues = "vlek"
        elif name == f"SEV-{product}":
            issues = "vcek"
        else:
            raise ConfigError(f"{source}: {name!r} is neither the ASK nor the ASVK of {product}")
        chain = cls(product, ark, intermediate, issues)
        return chain if crl is None else chain.with_crl(crl, source=source)

    def with_crl(self, crl: bytes, *, source: str = "cert_chain") -> ProductChain:
        """This chain with the product's CRL (DER or PEM).

        Raises:
            ConfigError: the CRL does not parse, or the ARK did not sign it.
        """
        try:
            parsed = load_crl(crl)
        except ValueError as exc:
            raise ConfigError(f"{source}: the CRL does not parse ({exc})") from exc
        if parsed.issuer != self.ark.subject or not parsed.is_signature_valid(self.ark.public_key()):  # type: ignore[arg-type]
            raise ConfigError(f"{source}: the CRL is not signed by the {self.product} ARK")
        return dataclasses.replace(self, crl=parsed)


def _product_of(ark: x509.Certificate) -> str:
    common = common_name(ark.subject)
    if not common.startswith("ARK-"):
        raise ConfigError(f"not an AMD ARK: subject {ark.subject.rfc4514_string()}")
    return common.removeprefix("ARK-")


def _within(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise EvidenceError(f"snp_certificate_expired: the {what} is not valid at {now.isoformat()}")


class SnpTrust:
    """The pinned product chains a broker accepts."""

    def __init__(self, chains: Iterable[ProductChain]) -> None:
        self.chains = tuple(chains)
        if not self.chains:
            raise ConfigError("the sev-snp verifier needs at least one pinned AMD cert_chain")

    def endorse(self, cert_bytes: bytes, kind: str, now: int, *, turin: bool) -> Endorsement:
        """Verify a VCEK or VLEK up to a pinned ARK at ``now``; returns what it certifies.

        Raises:
            EvidenceError: ``snp_certificate`` (unparseable, wrong key type, bad extensions),
                ``snp_chain`` (no pinned intermediate issued it), ``snp_certificate_expired``,
                ``snp_certificate_revoked``, or ``snp_crl_stale`` (the configured CRL is past its
                next update: revocation cannot be decided, so nothing is accepted).
        """
        cert = load_certificate(cert_bytes, kind.upper())
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        chain = self._issuer(cert, kind)
        if chain is None:
            raise EvidenceError(f"snp_chain: the {kind.upper()} is not issued by a pinned AMD ASK or ASVK")
        for c, what in ((cert, kind.upper()), (chain.intermediate, "ASK"), (chain.ark, "ARK")):
            _within(c, moment, what)
        if chain.crl is not None:
            next_update = chain.crl.next_update_utc
            if next_update is None or next_update < moment:
                raise EvidenceError(f"snp_crl_stale: the {chain.product} CRL is past its next update; refresh it")
            for c, what in ((cert, kind.upper()), (chain.intermediate, "ASK")):
                if chain.crl.get_revoked_certificate_by_serial_number(c.serial_number) is not None:
                    raise EvidenceError(f"snp_certificate_revoked: the {what} is on AMD's {chain.product} CRL")
        return Endorsement.read(cert, kind, chain.product, turin=turin)

    def _issuer(self, cert: x509.Certificate, kind: str) -> ProductChain | None:
        return next((c for c in self.chains if c.issues == kind and issued_by(cert, c.intermediate)), None)


def verify_report_signature(key: ec.EllipticCurvePublicKey, r: int, s: int, signed: bytes) -> bool:
    """Whether (r, s) is an ECDSA P-384 / SHA-384 signature of ``signed`` under ``key``."""
    return verify_ecdsa_sha384(key, r, s, signed)
