"""The tdx verifier on real TDX quotes with their published collateral (tests/vectors/tdx)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_module
from weightvault.attestation.interfaces import AttestationContext
from weightvault.errors import ConfigError, EvidenceError

require_module("dcap_qvl")

from weightvault.attestation.tdx.verifier import AppraisedQuote, TDXVerifier, check_binding  # noqa: E402

VECTORS = Path(__file__).parents[2] / "vectors" / "tdx"
QUOTE = (VECTORS / "tdx_quote").read_bytes()
COLLATERAL = (VECTORS / "tdx_quote_collateral.json").read_text()
OUTDATED = (VECTORS / "tdx_quote_outdated").read_bytes()
OUTDATED_COLLATERAL = (VECTORS / "tdx_quote_outdated_collateral.json").read_text()
MRTD = bytes.fromhex("91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7")
RTMR0 = bytes.fromhex(
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
)
#: Inside the collateral's validity (its TCB info: 2025-06-19 to 2025-07-19).
WHEN = int(datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC).timestamp())


def _verifier(**options: object) -> TDXVerifier:
    collateral = options.pop("collateral", [COLLATERAL])
    mrtd = options.pop("mrtd", [MRTD])
    return TDXVerifier(collateral, mrtd, **options)  # type: ignore[arg-type]


def _refused(verifier: TDXVerifier, quote: bytes, code: str, now: int = WHEN) -> None:
    with pytest.raises(EvidenceError) as caught:
        verifier.appraise_quote(quote, now)
    assert str(caught.value).startswith(code + ":"), str(caught.value)


def test_a_real_tdx_quote_passes_every_check_but_the_session_binding() -> None:
    appraised = _verifier(rtmr={0: [RTMR0]}).appraise_quote(QUOTE, WHEN)
    claims = appraised.claims
    assert (claims["tdx.quote_version"], claims["tdx.fmspc"], claims["tdx.tcb_status"]) == (
        4,
        "b0c06f000000",
        "UpToDate",
    )
    assert claims["tdx.mrtd"] == MRTD.hex()
    assert claims["tdx.rtmr0"] == RTMR0.hex()
    assert claims["tdx.attributes.debug"] is False
    assert all(name.startswith("tdx.") for name in claims)
    # Its REPORT_DATA was made for someone else's protocol: a full verification refuses it.
    context = AttestationContext("acme", "c", b"n", appraised.report_data[:32], WHEN)
    evidence = {"type": "tdx", "quote": base64.b64encode(QUOTE).decode()}
    with pytest.raises(EvidenceError, match=r"^tdx_report_data"):
        _verifier().verify(evidence, context)


def test_the_binding_is_the_session_report_data_then_zeroes() -> None:
    bound = hashlib.sha256(b"session").digest()
    context = AttestationContext("acme", "c", b"n", bound, WHEN)
    check_binding(AppraisedQuote(bound + bytes(32), {}), context)
    for report_data in (hashlib.sha256(b"other").digest() + bytes(32), bound + b"\x01" + bytes(31), bound):
        with pytest.raises(EvidenceError, match=r"^tdx_report_data"):
            check_binding(AppraisedQuote(report_data, {}), context)


def _with_header(quote: bytes, version: int | None = None, tee: int | None = None) -> bytes:
    raw = bytearray(quote)
    if version is not None:
        struct.pack_into("<H", raw, 0, version)
    if tee is not None:
        struct.pack_into("<I", raw, 4, tee)
    return bytes(raw)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("after the collateral's next update", "tdx_collateral_expired"),
        ("before the collateral was issued", "tdx_collateral_expired"),
        ("a flipped byte in the TD report", "tdx_quote"),
        ("a flipped byte in the signature", "tdx_quote"),
        ("another Intel root pinned", "tdx_quote"),
        ("no collateral for its FMSPC", "tdx_collateral_missing"),
        ("MRTD not a reference value", "tdx_measurement"),
        ("RTMR0 not a reference value", "tdx_rtmr"),
        ("only OutOfDate allowed", "tdx_tcb_status"),
        ("truncated", "tdx_quote"),
        ("oversized", "tdx_evidence"),
        ("version 3", "tdx_quote_version"),
        ("version 6", "tdx_quote_version"),
        ("an SGX TEE type", "tdx_quote_version"),
    ],
)
def test_the_real_quote_is_refused_after_any_change(change: str, code: str) -> None:
    quote, now = QUOTE, WHEN
    options: dict[str, object] = {}
    if change == "after the collateral's next update":
        now = int(datetime.datetime(2025, 7, 20, tzinfo=datetime.UTC).timestamp())
    elif change == "before the collateral was issued":
        now = int(datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC).timestamp())
    elif change == "a flipped byte in the TD report":
        quote = bytes(QUOTE[:200]) + bytes([QUOTE[200] ^ 1]) + QUOTE[201:]
    elif change == "a flipped byte in the signature":
        quote = bytes(QUOTE[:640]) + bytes([QUOTE[640] ^ 1]) + QUOTE[641:]
    elif change == "another Intel root pinned":
        from cryptography.hazmat.primitives import serialization

        from tests.snp_evidence import hierarchy

        options = {"root_ca_der": hierarchy("Milan").ark.public_bytes(serialization.Encoding.DER)}
    elif change == "no collateral for its FMSPC":
        options = {"collateral": [OUTDATED_COLLATERAL]}
    elif change == "MRTD not a reference value":
        options = {"mrtd": [bytes(48)]}
    elif change == "RTMR0 not a reference value":
        options = {"rtmr": {0: [bytes(48)]}}
    elif change == "only OutOfDate allowed":
        options = {"allowed_tcb_status": ["OutOfDate"]}
    elif change == "truncated":
        quote = QUOTE[:-100]
    elif change == "oversized":
        quote = QUOTE + bytes(70_000)
    elif change == "version 3":
        quote = _with_header(QUOTE, version=3)
    elif change == "version 6":
        quote = _with_header(QUOTE, version=6)
    elif change == "an SGX TEE type":
        quote = _with_header(QUOTE, tee=0)
    _refused(_verifier(**options), quote, code, now)


def test_a_real_platform_below_every_tcb_level_is_refused() -> None:
    verifier = _verifier(collateral=[OUTDATED_COLLATERAL], mrtd=[bytes(48)])
    issued = json.loads(json.loads(OUTDATED_COLLATERAL)["tcb_info"])["issueDate"]
    now = int(datetime.datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()) + 86_400
    _refused(verifier, OUTDATED, "tdx_tcb_level", now)


def test_malformed_evidence_is_refused() -> None:
    context = AttestationContext("acme", "c", b"n", bytes(32), WHEN)
    for evidence in (
        {"type": "tdx"},
        {"type": "tdx", "quote": "not base64!"},
        {"type": "tdx", "quote": base64.b64encode(QUOTE).decode(), "extra": 1},
        {"type": "tdx", "quote": "A" * 100_000},
    ):
        with pytest.raises(EvidenceError, match=r"^tdx_evidence"):
            _verifier().verify(evidence, context)


def test_configuration_from_files(tmp_path: Path) -> None:
    (tmp_path / "b0c06f.json").write_text(COLLATERAL)
    section: dict[str, object] = {
        "collateral": ["b0c06f.json"],
        "mrtd": [MRTD.hex()],
        "rtmr": {"0": [RTMR0.hex()]},
        "allowed_tcb_status": ["UpToDate", "SWHardeningNeeded"],
    }
    verifier = TDXVerifier.from_config(section, tmp_path)
    assert verifier.appraise_quote(QUOTE, WHEN).claims["tdx.mrtd"] == MRTD.hex()
    cases: list[tuple[dict[str, object], str]] = [
        ({"mrtd": []}, "reference MRTD"),
        ({"mrtd": ["abcd"]}, "48 bytes"),
        ({"rtmr": {"4": [RTMR0.hex()]}}, "rtmr maps 0..3"),
        ({"collateral": []}, "needs collateral"),
        ({"collateral": ["missing.json"]}, "cannot read"),
        ({"allowed_tcb_status": ["Fine"]}, "allowed_tcb_status"),
        ({"allow_debug": "no"}, "true or false"),
        ({"surprise": 1}, "unknown key"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            TDXVerifier.from_config(section | bad, tmp_path)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ConfigError, match="collateral does not parse"):
        TDXVerifier.from_config(section | {"collateral": ["junk.json"]}, tmp_path)


def test_the_tdx_attester_says_what_is_missing_and_leaves_no_entry(tmp_path: Path) -> None:
    from weightvault.attestation.tdx.attester import TdxAttester

    with pytest.raises(ConfigError, match="TDX attestation needs the configfs-tsm report interface"):
        TdxAttester.open()  # no TD runs these tests
    root = tmp_path / "tsm"
    root.mkdir()
    with pytest.raises(ConfigError, match="tdx_guest firmware refused a report"):
        TdxAttester(root=root).evidence(bytes(32), {})
    assert list(root.iterdir()) == []


# -- made quotes: the real quote's structures, re-signed under test roots (tests/tdx_evidence.py) -------


@pytest.fixture(scope="module")
def platform() -> Any:
    from tests.tdx_evidence import TdxPlatform

    return TdxPlatform()


def _made_verifier(platform: Any, *, revoked: bool = False, **options: Any) -> TDXVerifier:
    return TDXVerifier([platform.collateral(revoked_pck=revoked)], [MRTD], root_ca_der=platform.root_der, **options)


def _made_context(report_data: bytes) -> AttestationContext:
    from tests.tdx_evidence import NOW

    return AttestationContext("acme", "c", b"n", report_data, int(NOW.timestamp()))


def test_a_made_quote_bound_to_the_session_passes_every_check(platform: Any) -> None:
    bound = hashlib.sha256(b"session").digest()
    evidence = {"type": "tdx", "quote": base64.b64encode(platform.quote(bound)).decode()}
    result = _made_verifier(platform).verify(evidence, _made_context(bound))
    assert result.claims["tdx.tcb_status"] == "UpToDate"
    assert result.claims["tdx.attributes.debug"] is False
    assert result.claims["tdx.mrtd"] == MRTD.hex()


@pytest.mark.parametrize(
    ("quote", "verifier", "code"),
    [
        ({"debug": True}, {}, "tdx_debug"),
        ({"other_session": True}, {}, "tdx_report_data"),
        ({"mrtd": b"\x42" * 48}, {}, "tdx_measurement"),
        ({"forged": True}, {}, "tdx_quote"),
        ({}, {"revoked": True}, "tdx_revoked"),
        ({}, {"real_root": True}, "tdx_quote"),
    ],
)
def test_made_quotes_failing_one_check(
    platform: Any, quote: dict[str, Any], verifier: dict[str, Any], code: str
) -> None:
    import cryptography.hazmat.primitives.asymmetric.ec as ec

    bound = hashlib.sha256(b"session").digest()
    data = hashlib.sha256(b"another session").digest() if quote.pop("other_session", False) else bound
    if quote.pop("forged", False):
        quote["signer"] = ec.generate_private_key(ec.SECP256R1())
    raw = platform.quote(data, **quote)
    if verifier.pop("real_root", False):
        made = TDXVerifier([platform.collateral()], [MRTD])  # Intel's root, not the test one
    else:
        made = _made_verifier(platform, **verifier)
    with pytest.raises(EvidenceError) as caught:
        made.verify({"type": "tdx", "quote": base64.b64encode(raw).decode()}, _made_context(bound))
    assert str(caught.value).startswith(code + ":"), str(caught.value)


def test_a_debuggable_td_is_refused_even_where_allowed(platform: Any) -> None:
    """dcap-qvl refuses a debuggable TD itself, so allow_debug cannot admit one: refused as tdx_debug."""
    bound = hashlib.sha256(b"session").digest()
    evidence = {"type": "tdx", "quote": base64.b64encode(platform.quote(bound, debug=True)).decode()}
    with pytest.raises(EvidenceError, match=r"^tdx_debug"):
        _made_verifier(platform, allow_debug=True).verify(evidence, _made_context(bound))
