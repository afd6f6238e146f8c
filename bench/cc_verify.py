"""SEV-SNP and TDX verification latency: weightvault's verifiers against the bare checks they must do.

Two inputs: the real Milan report with its VCEK and AMD's Milan chain (tests/vectors/sev_snp,
verified at a time inside the VCEK's validity, with debugging allowed since that guest
allows it), and a report made under test roots (tests/snp_evidence.py, RSA-2048 ARK/ASK)
bound to a challenge. For each, round after round in the same order (interleaved):

* ``baseline``: what any SNP verifier must at least compute: the RSASSA-PSS check of the
  VCEK by the ASK and the ECDSA P-384 check of the report by the VCEK (pyca/cryptography,
  certificate and report already parsed);
* ``sev-snp``: ``SNPVerifier.verify`` on the evidence as the broker receives it (base64,
  certificate parsing, chain, validity, signature, TCB, chip id, binding, policy,
  measurement, claims).

And for TDX, the real quote with its collateral at a time inside the collateral's validity:
``baseline`` is dcap-qvl's verification alone, ``tdx`` the tdx verifier's appraisal (the
quote's REPORT_DATA belongs to another protocol, so the session binding, a 32-byte
comparison, is left out).

Prints min and median microseconds per verification and the ratio ours / baseline.

Usage: python bench/cc_verify.py [--rounds 7] [--per-round 200]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The real TDX quote's MRTD (tests/vectors/tdx), its reference value here.
TDX_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))
    from bench._timing import interleaved
    from bench.cpu_load import cpu_model
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from tests.snp_evidence import NOW, Chip, evidence, hierarchy

    from weightvault.attestation.interfaces import AttestationContext
    from weightvault.attestation.snp.report import Report, parse_report
    from weightvault.attestation.snp.verifier import SNPVerifier
    from weightvault.crypto.sev import ProductChain, SnpTrust, load_certificate

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()

    @dataclass
    class Case:
        verifier: SNPVerifier
        evidence: dict[str, str]
        context: AttestationContext
        chain: ProductChain
        report: Report
        vcek: bytes

    vectors = root / "tests" / "vectors" / "sev_snp"
    real_report, real_vcek = (vectors / "attestation.bin").read_bytes(), (vectors / "vcek.testcer").read_bytes()
    real_trust = SnpTrust([ProductChain.from_pem((vectors / "ask_ark_milan.pem").read_bytes())])
    real_parsed = parse_report(real_report)
    when = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp())
    real = Case(
        SNPVerifier(real_trust, [real_parsed.measurement], allow_debug=True),
        evidence(real_report, real_vcek),
        AttestationContext("acme", "c", b"n", real_report[0x50:0x70], when),
        real_trust.chains[0],
        real_parsed,
        real_vcek,
    )
    roots = hierarchy("Milan")
    chip = Chip(roots)
    bound = hashlib.sha256(b"bench").digest()
    made_trust = SnpTrust([ProductChain.from_pem(roots.chain_pem)])
    made_report = chip.report(bound)
    made = Case(
        SNPVerifier(made_trust, [b"\x11" * 48]),
        evidence(made_report, chip.der),
        AttestationContext("acme", "c", b"n", bound, int(NOW.timestamp())),
        made_trust.chains[0],
        parse_report(made_report),
        chip.der,
    )

    def baseline(case: Case) -> Callable[[], None]:
        cert = load_certificate(case.vcek, "VCEK")
        report = case.report
        ask = case.chain.intermediate
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        signature = encode_dss_signature(report.signature_r, report.signature_s)

        def run() -> None:
            cert.verify_directly_issued_by(ask)
            key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))

        return run

    def ours(case: Case) -> Callable[[], None]:
        def run() -> None:
            case.verifier.verify(case.evidence, case.context)

        return run

    methods = {
        ("real Milan", "baseline"): baseline(real),
        ("real Milan", "sev-snp"): ours(real),
        ("made", "baseline"): baseline(made),
        ("made", "sev-snp"): ours(made),
    }
    try:
        import dcap_qvl
    except ImportError:
        print("dcap-qvl not installed (pip install 'weightvault[tdx]'): no TDX figures")
    else:
        from weightvault.attestation.tdx.verifier import TDXVerifier

        tdx_vectors = root / "tests" / "vectors" / "tdx"
        quote = (tdx_vectors / "tdx_quote").read_bytes()
        collateral_text = (tdx_vectors / "tdx_quote_collateral.json").read_text()
        collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_text)
        tdx_when = int(datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC).timestamp())
        tdx = TDXVerifier([collateral_text], [bytes.fromhex(TDX_MRTD)])

        def dcap_alone() -> None:
            dcap_qvl.verify(quote, collateral, tdx_when)

        def tdx_ours() -> None:
            tdx.appraise_quote(quote, tdx_when)

        methods[("real TDX", "baseline")] = dcap_alone
        methods[("real TDX", "tdx")] = tdx_ours
    times = {k: [t * 1e6 for t in v] for k, v in interleaved(methods, args.rounds, args.per_round).items()}
    print(f"SEV-SNP and TDX verification, {args.rounds} rounds x {args.per_round}, on {cpu_model()}")
    print(f"{'input':<12} {'method':<10} {'min us':>9} {'median us':>10}")
    for (case, method), values in times.items():
        print(f"{case:<12} {method:<10} {min(values):>9.0f} {statistics.median(values):>10.0f}")
    for case, ours_name in (("real Milan", "sev-snp"), ("made", "sev-snp"), ("real TDX", "tdx")):
        if (case, ours_name) in times:
            base, mine = statistics.median(times[(case, "baseline")]), statistics.median(times[(case, ours_name)])
            print(f"{case}: {ours_name} / baseline (median) = {mine / base:.2f}")


if __name__ == "__main__":
    main()
