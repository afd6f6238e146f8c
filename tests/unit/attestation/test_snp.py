"""The sev-snp verifier: a real Milan report with AMD's real chain, and made evidence for every failure path."""

from __future__ import annotations

import base64
import datetime
import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.snp_evidence import NOW, Chip, Hierarchy, Tcb, evidence, hierarchy
from weightvault.attestation.interfaces import AttestationContext
from weightvault.attestation.snp.report import REPORT_SIZE, TcbVersion, parse_report
from weightvault.attestation.snp.verifier import SNPVerifier
from weightvault.crypto.sev import ProductChain, SnpTrust
from weightvault.errors import ConfigError, EvidenceError

VECTORS = Path(__file__).parents[2] / "vectors" / "sev_snp"
SAMPLE_MEASUREMENT = bytes.fromhex(
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
)
SAMPLE_TIME = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp())
MEASUREMENT = b"\x11" * 48


def _context(expected: bytes, now: int) -> AttestationContext:
    return AttestationContext(tenant="acme", challenge_id="c1", nonce=b"n" * 32, expected_report_data=expected, now=now)


def _refused(verifier: SNPVerifier, ev: dict[str, str], context: AttestationContext, code: str) -> None:
    with pytest.raises(EvidenceError) as caught:
        verifier.verify(ev, context)
    assert str(caught.value).startswith(code + ":"), str(caught.value)


# -- the real sample -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def milan() -> SnpTrust:
    return SnpTrust([ProductChain.from_pem((VECTORS / "ask_ark_milan.pem").read_bytes())])


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, bytes]:
    return (VECTORS / "attestation.bin").read_bytes(), (VECTORS / "vcek.testcer").read_bytes()


def _sample_context(report: bytes, now: int = SAMPLE_TIME) -> AttestationContext:
    return _context(report[0x50:0x70], now)  # the sample's own REPORT_DATA: it cannot answer a fresh challenge


def test_the_real_milan_report_verifies_under_amds_real_chain(milan: SnpTrust, sample: tuple[bytes, bytes]) -> None:
    report, vcek = sample
    verifier = SNPVerifier(milan, [SAMPLE_MEASUREMENT], allow_debug=True)
    result = verifier.verify(evidence(report, vcek), _sample_context(report))
    claims = result.claims
    assert claims["snp.product"] == "Milan"
    assert claims["snp.signing_key"] == "vcek"
    assert claims["snp.measurement"] == SAMPLE_MEASUREMENT.hex()
    assert (claims["snp.tcb.bootloader"], claims["snp.tcb.tee"], claims["snp.tcb.snp"]) == (2, 0, 5)
    assert claims["snp.tcb.microcode"] == 0x44
    assert (claims["snp.policy.debug"], claims["snp.policy.smt"], claims["snp.policy.migrate_ma"]) == (
        True,
        True,
        False,
    )
    assert str(claims["snp.chip_id"]).startswith("3ac3fe21e13fb099")
    assert all(name.startswith("snp.") for name in claims)


def test_the_real_report_allows_debugging_and_is_refused_by_default(
    milan: SnpTrust, sample: tuple[bytes, bytes]
) -> None:
    report, vcek = sample
    _refused(SNPVerifier(milan, [SAMPLE_MEASUREMENT]), evidence(report, vcek), _sample_context(report), "snp_debug")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("flip a measured byte", "snp_signature"),
        ("flip the signature", "snp_signature"),
        ("another challenge", "snp_report_data"),
        ("after the VCEK expires", "snp_certificate_expired"),
        ("an unknown measurement", "snp_measurement"),
        ("a newer microcode required", "snp_tcb_below_minimum"),
        ("only Genoa pinned", "snp_chain"),
        ("only the VLEK chain pinned", "snp_chain"),
        ("truncated", "snp_report_size"),
        ("one byte more", "snp_report_size"),
    ],
)
def test_the_real_report_is_refused_after_any_change(
    milan: SnpTrust, sample: tuple[bytes, bytes], change: str, code: str
) -> None:
    report, vcek = sample
    trust, measurements, now, min_tcb = milan, [SAMPLE_MEASUREMENT], SAMPLE_TIME, None
    context = _sample_context(report)
    raw = bytearray(report)
    if change == "flip a measured byte":
        raw[0x90] ^= 1
    elif change == "flip the signature":
        raw[0x2A0] ^= 1
    elif change == "another challenge":
        context = _context(hashlib.sha256(b"another").digest(), now)
    elif change == "after the VCEK expires":
        context = _sample_context(report, int(datetime.datetime(2029, 9, 25, tzinfo=datetime.UTC).timestamp()))
    elif change == "an unknown measurement":
        measurements = [bytes(48)]
    elif change == "a newer microcode required":
        min_tcb = TcbVersion(bootloader=2, tee=0, snp=5, microcode=0x45)
    elif change == "only Genoa pinned":
        trust = SnpTrust([ProductChain.from_pem((VECTORS / "ask_ark_genoa.pem").read_bytes())])
    elif change == "only the VLEK chain pinned":
        trust = SnpTrust([ProductChain.from_pem((VECTORS / "ask_ark_milan_vlek.pem").read_bytes())])
    elif change == "truncated":
        del raw[-1]
    elif change == "one byte more":
        raw.append(0)
    verifier = SNPVerifier(trust, measurements, min_tcb=min_tcb, allow_debug=True)
    _refused(verifier, evidence(bytes(raw), vcek), context, code)


def test_the_pinned_chains_are_checked_when_loaded() -> None:
    milan = (VECTORS / "ask_ark_milan.pem").read_bytes()
    genoa = (VECTORS / "ask_ark_genoa.pem").read_bytes()
    ask_milan, ark_genoa = (
        milan[: milan.index(b"-----END CERTIFICATE-----") + 26],
        genoa[genoa.index(b"-----END") + 26 :],
    )
    with pytest.raises(ConfigError, match="did not issue"):
        ProductChain.from_pem(ask_milan + ark_genoa)  # Milan's ASK beside Genoa's ARK
    with pytest.raises(ConfigError, match="two certificates"):
        ProductChain.from_pem(ask_milan)
    assert ProductChain.from_pem((VECTORS / "ask_ark_milan_vlek.pem").read_bytes()).issues == "vlek"


# -- made evidence, bound to a challenge -------------------------------------------------------


@pytest.fixture(scope="module")
def roots() -> Hierarchy:
    return hierarchy("Milan")


@pytest.fixture(scope="module")
def chip(roots: Hierarchy) -> Chip:
    return Chip(roots)


def _made(roots: Hierarchy, **options: object) -> SNPVerifier:
    crl = options.pop("crl", None)
    trust = SnpTrust([ProductChain.from_pem(roots.chain_pem, crl)])  # type: ignore[arg-type]
    return SNPVerifier(trust, [MEASUREMENT], **options)  # type: ignore[arg-type]


BOUND = hashlib.sha256(b"this session's report data").digest()
WHEN = int(NOW.timestamp())


def test_made_evidence_bound_to_the_challenge_verifies(roots: Hierarchy, chip: Chip) -> None:
    result = _made(roots).verify(evidence(chip.report(BOUND), chip.der), _context(BOUND, WHEN))
    assert result.claims["snp.report_version"] == 3
    assert result.claims["snp.vmpl"] == 0
    assert result.claims["snp.chip_id"] == bytes(range(64)).hex()
    assert result.evidence_digest.startswith("sha256:")


def test_a_masked_chip_id_verifies_without_a_chip_claim(roots: Hierarchy, chip: Chip) -> None:
    result = _made(roots).verify(evidence(chip.report(BOUND, mask_chip_id=True), chip.der), _context(BOUND, WHEN))
    assert "snp.chip_id" not in result.claims


def test_a_vlek_report_verifies_only_under_a_pinned_asvk() -> None:
    asvk = hierarchy("Milan", vlek=True)
    vlek = Chip(asvk, vlek=True)
    made = evidence(vlek.report(BOUND), vlek.der)
    assert _made(asvk).verify(made, _context(BOUND, WHEN)).claims["snp.signing_key"] == "vlek"
    stale = evidence(vlek.report(BOUND, tcb=Tcb(snp=9)), vlek.der)  # the VLEK's TCB is not the report's
    _refused(_made(asvk), stale, _context(BOUND, WHEN), "snp_tcb_mismatch")
    # The same VLEK presented for a report that says VCEK: refused, whatever the signature.
    forged = evidence(vlek.report(BOUND, signing_key=0), vlek.der)
    _refused(_made(asvk), forged, _context(BOUND, WHEN), "snp_chain")


@pytest.mark.parametrize(
    ("options", "verifier_options", "code"),
    [
        ({"report_data": hashlib.sha256(b"another challenge").digest()}, {}, "snp_report_data"),
        ({"report_data": BOUND + b"\x01"}, {}, "snp_report_data"),  # the second half must be zero
        ({"policy": 0x30000 | 1 << 19}, {}, "snp_debug"),
        ({"policy": 0x30000 | 1 << 18}, {}, "snp_migration_agent"),
        ({}, {"allow_smt": False}, "snp_smt"),
        ({"vmpl": 1}, {}, "snp_vmpl"),
        ({"measurement": b"\x22" * 48}, {}, "snp_measurement"),
        ({}, {"min_tcb": TcbVersion(bootloader=3, tee=0, snp=9, microcode=0)}, "snp_tcb_below_minimum"),
        ({"tcb": Tcb(microcode=116)}, {}, "snp_tcb_mismatch"),  # a report from another TCB than the VCEK's
        ({"chip_id": b"\xee" * 64}, {}, "snp_chip_id_mismatch"),
        ({"version": 4}, {}, "snp_report_version"),
        ({"version": 6}, {}, "snp_report_version"),
        ({"sig_algo": 2}, {}, "snp_signature_algorithm"),
        ({"signing_key": 7}, {}, "snp_signing_key"),
        ({"signing_key": 3}, {}, "snp_signing_key"),
    ],
)
def test_made_evidence_fails_each_check(
    roots: Hierarchy, chip: Chip, options: dict[str, object], verifier_options: dict[str, object], code: str
) -> None:
    report = chip.report(options.pop("report_data", BOUND), **options)  # type: ignore[arg-type]
    _refused(_made(roots, **verifier_options), evidence(report, chip.der), _context(BOUND, WHEN), code)


def test_a_report_signed_by_another_chip_is_refused(roots: Hierarchy, chip: Chip) -> None:
    other = Chip(roots)
    _refused(
        _made(roots), evidence(chip.report(BOUND, signer=other.key), chip.der), _context(BOUND, WHEN), "snp_signature"
    )


def test_a_vcek_from_an_unpinned_hierarchy_is_refused(roots: Hierarchy) -> None:
    stranger = Chip(hierarchy("Milan"))  # same names, other keys
    _refused(_made(roots), evidence(stranger.report(BOUND), stranger.der), _context(BOUND, WHEN), "snp_chain")


def test_revocation_and_expiry(roots: Hierarchy) -> None:
    chip = Chip(roots)
    made = evidence(chip.report(BOUND), chip.der)
    revoked = roots.crl([chip.cert.serial_number])
    _refused(_made(roots, crl=revoked), made, _context(BOUND, WHEN), "snp_certificate_revoked")
    assert _made(roots, crl=roots.crl([12345])).verify(made, _context(BOUND, WHEN)).verifier == "sev-snp"
    stale = roots.crl([], next_update=NOW - datetime.timedelta(days=1))
    _refused(_made(roots, crl=stale), made, _context(BOUND, WHEN), "snp_crl_stale")
    with pytest.raises(ConfigError, match="CRL is not signed"):
        _made(roots, crl=roots.crl([], signer=hierarchy("Milan").ark_key))
    short = Chip(roots, not_after=NOW - datetime.timedelta(seconds=1))
    _refused(_made(roots), evidence(short.report(BOUND), short.der), _context(BOUND, WHEN), "snp_certificate_expired")


@pytest.mark.parametrize(
    ("evidence_change", "code"),
    [
        ({"extra": "x"}, "snp_evidence"),
        ({"report": "not base64!"}, "snp_evidence"),
        ({"report": base64.b64encode(bytes(1 << 20)).decode()}, "snp_evidence"),  # oversized: refused before decoding
        ({"endorsement": base64.b64encode(b"junk").decode()}, "snp_certificate"),
        ({"endorsement": base64.b64encode(bytes(20_000)).decode()}, "snp_evidence"),
    ],
)
def test_malformed_evidence_is_refused(
    roots: Hierarchy, chip: Chip, evidence_change: dict[str, str], code: str
) -> None:
    made = evidence(chip.report(BOUND), chip.der) | evidence_change
    _refused(_made(roots), made, _context(BOUND, WHEN), code)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_any_report_bytes_parse_or_raise_evidence_error(raw: bytes) -> None:
    try:
        report = parse_report(raw)
    except EvidenceError as exc:
        failure = str(exc)
    else:
        assert report.version in (2, 3, 5)
        assert len(report.signed) == 0x2A0
        return
    assert failure.startswith("snp_")


@given(st.integers(0, 2**64 - 1))
def test_guest_policy_bits(raw: int) -> None:
    from weightvault.attestation.snp.report import GuestPolicy

    policy = GuestPolicy(raw)
    assert (policy.smt, policy.migrate_ma, policy.debug) == (
        bool(raw & 1 << 16),
        bool(raw & 1 << 18),
        bool(raw & 1 << 19),
    )
    assert struct.pack("<Q", raw)[1] == policy.abi_major


# -- configuration ------------------------------------------------------------------------


def test_configuration_from_files(tmp_path: Path, roots: Hierarchy, chip: Chip) -> None:
    (tmp_path / "milan.pem").write_bytes(roots.chain_pem)
    (tmp_path / "milan.crl").write_bytes(roots.crl([chip.cert.serial_number]))
    section = {
        "cert_chains": ["milan.pem"],
        "crls": {"Milan": "milan.crl"},
        "measurements": [MEASUREMENT.hex()],
        "min_tcb": {"bootloader": 3, "snp": 8},
        "allow_smt": True,
        "test_roots": True,
    }
    verifier = SNPVerifier.from_config(section, tmp_path)
    assert verifier.min_tcb == TcbVersion(bootloader=3, tee=0, snp=8, microcode=0)
    _refused(verifier, evidence(chip.report(BOUND), chip.der), _context(BOUND, WHEN), "snp_certificate_revoked")
    cases: list[tuple[dict[str, object], str]] = [
        ({"measurements": []}, "reference measurements"),
        ({"measurements": ["ab"]}, "48 bytes"),
        ({"crls": {"Genoa": "milan.crl"}}, "no pinned cert_chain"),
        ({"min_tcb": {"microcode": 256}}, "0..255"),
        ({"min_tcb": {"ucode": 1}}, "min_tcb"),
        ({"allow_debug": "yes"}, "true or false"),
        ({"cert_chains": ["missing.pem"]}, "cannot read"),
        ({"cert_chains": [], "crls": {}}, "at least one"),
        ({"surprise": 1}, "unknown key"),
        ({"test_roots": False}, "not AMD's"),
        ({"test_roots": "yes"}, "true or false"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            SNPVerifier.from_config(section | bad, tmp_path)


# -- the workload's attester ----------------------------------------------------------------


def _table(entries: list[tuple[bytes, bytes]]) -> bytes:
    header_size = 24 * (len(entries) + 1)
    header, body = b"", b""
    for guid, blob in entries:
        header += struct.pack("<16sII", guid, header_size + len(body), len(blob))
        body += blob
    return header + bytes(24) + body


def test_the_certificate_table_of_an_extended_report() -> None:
    from weightvault.attestation.snp.attester import TABLE_GUIDS, certificate_table

    aux = _table(
        [(TABLE_GUIDS["ask"].bytes_le, b"ask"), (b"\x01" * 16, b"other"), (TABLE_GUIDS["vcek"].bytes_le, b"v")]
    )
    assert certificate_table(aux) == {"ask": b"ask", "vcek": b"v"}
    outside = bytearray(aux)
    struct.pack_into("<I", outside, 20, 10_000)  # the first entry's length runs past the end
    with pytest.raises(EvidenceError, match="snp_certificate_table"):
        certificate_table(bytes(outside))
    with pytest.raises(EvidenceError, match="terminating"):
        certificate_table(struct.pack("<16sII", TABLE_GUIDS["vcek"].bytes_le, 24, 1) + b"x")


@given(st.binary(max_size=512))
def test_any_certificate_table_bytes_parse_or_raise_evidence_error(aux: bytes) -> None:
    from weightvault.attestation.snp.attester import certificate_table

    try:
        found = certificate_table(aux)
    except EvidenceError as exc:
        failure = str(exc)
    else:
        assert set(found) <= {"vcek", "vlek", "ask", "ark"}
        return
    assert failure.startswith("snp_certificate_table")


def test_the_attester_says_what_is_missing_on_a_machine_that_is_not_an_snp_guest(tmp_path: Path) -> None:
    from weightvault.attestation.snp.attester import SnpAttester
    from weightvault.client.workload import open_attester

    with pytest.raises(ConfigError, match="SEV-SNP attestation needs the configfs-tsm report interface"):
        SnpAttester.open()  # no SEV-SNP guest runs these tests
    with pytest.raises(ConfigError, match="--endorsement needs --attester snp"):
        open_attester("sample", None, None, (), tmp_path / "vcek.der")
    # A configfs-tsm of another TEE (or a plain directory standing in for one) is refused, and left clean.
    root = tmp_path / "tsm"
    root.mkdir()
    attester = SnpAttester(root=root)
    with pytest.raises(ConfigError, match="refused a report"):
        attester.evidence(BOUND, {})
    assert list(root.iterdir()) == []


def test_amds_own_chains_configure_without_test_roots(tmp_path: Path) -> None:
    for name in ("ask_ark_milan.pem", "ask_ark_milan_vlek.pem", "ask_ark_genoa.pem"):
        (tmp_path / name).write_bytes((VECTORS / name).read_bytes())
    section = {"cert_chains": ["ask_ark_milan.pem", "ask_ark_milan_vlek.pem", "ask_ark_genoa.pem"]}
    verifier = SNPVerifier.from_config(section | {"measurements": [SAMPLE_MEASUREMENT.hex()]}, tmp_path)
    assert [(c.product, c.issues, c.is_amds) for c in verifier.trust.chains] == [
        ("Milan", "vcek", True),
        ("Milan", "vlek", True),
        ("Genoa", "vcek", True),
    ]
