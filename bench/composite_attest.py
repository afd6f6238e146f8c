"""NVIDIA GPU and composite (SEV-SNP + 8 GPUs) attestation: verification latency, and the one-shot
challenge + attest + release against the real broker process.

Part 1, verification in process, round after round in the same order (interleaved):

* ``real H100``: NVIDIA's published H100 report with its chain, driver and VBIOS RIMs and roots
  (tests/vectors/nvidia, at 2024-06-01). ``baseline`` is what any verifier of it must
  compute: the four ECDSA P-384 checks of the chain's links and the report's signature
  (certificates already parsed); ``nvidia-gpu`` is ``NvidiaGpuVerifier`` on the evidence as
  the broker receives it.
* ``SNP + 8 GPUs``: composite evidence made under test roots (tests/snp_evidence.py,
  tests/nvidia_evidence.py). ``baseline`` is the SNP verifier's two signature checks plus, for
  each GPU, its three own checks (leaf, boot ROM, report) and NVIDIA's shared intermediate
  once; ``composite`` is ``CompositeVerifier``. Our verifier remembers chain links it has
  verified (the collateral cached), so after the first round a GPU costs one check.

Part 2, the one-shot flow over HTTP on loopback (a real ``broker serve`` process): a fresh
challenge, the evidence, ``POST /v1/attest`` with the release, the key unsealed; composite
(SNP guest + ``--gpus`` GPUs) beside the insecure-sample verifier (the protocol's floor).
Goal from issue 19: composite p50 <= 50 ms.

Prints min and median per verification and p50/p99 of the flow, and the ratios.

Usage: python bench/composite_attest.py [--rounds 7] [--per-round 50] [--seconds 5] [--gpus 8]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import itertools
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))
    from bench._timing import interleaved
    from bench.cpu_load import cpu_model
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from tests.nvidia_evidence import NOW, DeviceRoots, Gpu, MadeGpus, RimSigner, verifier_section
    from tests.snp_evidence import Chip, evidence, hierarchy

    from weightvault.attestation.composite import CompositeAttester, CompositeVerifier
    from weightvault.attestation.interfaces import AttestationContext
    from weightvault.attestation.nvidia.report import parse_report as parse_gpu_report
    from weightvault.attestation.nvidia.verifier import NvidiaGpuVerifier
    from weightvault.attestation.snp.report import parse_report as parse_snp_report
    from weightvault.attestation.snp.verifier import SNPVerifier
    from weightvault.crypto.sev import ProductChain, SnpTrust

    work = Path(tempfile.mkdtemp(prefix="wv-composite-bench-"))

    def ecdsa(cert: x509.Certificate, issuer: x509.Certificate) -> Callable[[], None]:
        key = issuer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        algorithm = ec.ECDSA(cert.signature_hash_algorithm or hashes.SHA384())
        signature, data = cert.signature, cert.tbs_certificate_bytes
        return lambda: key.verify(signature, data, algorithm)

    def report_check(raw: bytes, leaf: x509.Certificate) -> Callable[[], None]:
        report = parse_gpu_report(raw)
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        sig = encode_dss_signature(
            int.from_bytes(report.signature[:48], "big"), int.from_bytes(report.signature[48:], "big")
        )
        return lambda: key.verify(sig, report.signed, ec.ECDSA(hashes.SHA384()))

    # -- the real H100 --------------------------------------------------------------------------
    vectors = root / "tests" / "vectors" / "nvidia"
    real_raw = bytes.fromhex((vectors / "attestationReport.txt").read_text().strip())
    real_chain_pem = (vectors / "gpuAkCertChain.txt").read_bytes()
    real_chain = x509.load_pem_x509_certificates(real_chain_pem)
    real_verifier = NvidiaGpuVerifier.from_config(
        {
            "device_roots": ["verifier_device_root.pem"],
            "rim_roots": ["verifier_RIM_root.pem"],
            "driver_rims": ["Driver_RIM_test_no_gpu.swidtag"],
            "vbios_rims": ["1010_0200_882_96005E0001_test_no_gpu.swidtag"],
        },
        vectors,
    )
    real_evidence = {
        "type": "nvidia-gpu",
        "gpus": [
            {
                "report": base64.b64encode(real_raw).decode(),
                "certificates": base64.b64encode(real_chain_pem).decode(),
                "cc_mode": "on",
            }
        ],
    }
    then = int(datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC).timestamp())
    real_context = AttestationContext("acme", "c", b"n", bytes(32), then)
    real_checks = [ecdsa(c, p) for c, p in itertools.pairwise(real_chain)]
    real_checks.append(report_check(real_raw, real_chain[0]))

    # -- SNP + GPUs, made -----------------------------------------------------------------------
    milan = hierarchy("Milan")
    chip = Chip(milan)
    devices = DeviceRoots()
    gpus = [Gpu(devices) for _ in range(args.gpus)]
    section = verifier_section(work, devices, RimSigner())
    gpu_verifier = NvidiaGpuVerifier.from_config(tomllib.loads(section)["verifiers"]["nvidia_gpu"], work)
    snp = SNPVerifier(SnpTrust([ProductChain.from_pem(milan.chain_pem)]), [b"\x11" * 48])
    composite = CompositeVerifier({"sev-snp": snp, "nvidia-gpu": gpu_verifier})
    bound = hashlib.sha256(b"bench").digest()

    class Guest:
        def evidence(self, report_data: bytes, challenge: Any) -> dict[str, Any]:
            return evidence(chip.report(report_data), chip.der)

    made_evidence = CompositeAttester(Guest(), MadeGpus(gpus)).evidence(bound, {})
    made_context = AttestationContext("acme", "c", b"n", bound, int(NOW.timestamp()))
    snp_report = parse_snp_report(base64.b64decode(made_evidence["cpu"]["report"]))
    vcek_key = chip.cert.public_key()
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey)
    snp_sig = encode_dss_signature(snp_report.signature_r, snp_report.signature_s)
    made_checks: list[Callable[[], None]] = [
        lambda: chip.cert.verify_directly_issued_by(milan.ask),
        lambda: vcek_key.verify(snp_sig, snp_report.signed, ec.ECDSA(hashes.SHA384())),
        ecdsa(devices.ica, devices.root),
    ]
    for gpu, entry in zip(gpus, made_evidence["gpu"]["gpus"], strict=True):
        made_checks += [ecdsa(gpu.leaf, gpu.brom), ecdsa(gpu.brom, devices.ica)]
        made_checks.append(report_check(base64.b64decode(entry["report"]), gpu.leaf))

    def run_all(checks: list[Callable[[], None]]) -> Callable[[], None]:
        def run() -> None:
            for check in checks:
                check()

        return run

    methods: dict[tuple[str, str], Callable[[], object]] = {
        ("real H100", "baseline"): run_all(real_checks),
        ("real H100", "nvidia-gpu"): lambda: real_verifier.appraise_bound(real_evidence, real_context, real_raw[4:36]),
        (f"SNP + {args.gpus} GPUs", "baseline"): run_all(made_checks),
        (f"SNP + {args.gpus} GPUs", "composite"): lambda: composite.verify(made_evidence, made_context),
    }
    times = {k: [t * 1e3 for t in v] for k, v in interleaved(methods, args.rounds, args.per_round).items()}
    print(f"GPU and composite verification, {args.rounds} rounds x {args.per_round}, on {cpu_model()}")
    print(f"{'input':<16} {'method':<11} {'min ms':>8} {'median ms':>10}")
    for (case, method), values in times.items():
        print(f"{case:<16} {method:<11} {min(values):>8.2f} {statistics.median(values):>10.2f}")
    for case, ours in (("real H100", "nvidia-gpu"), (f"SNP + {args.gpus} GPUs", "composite")):
        base, mine = statistics.median(times[(case, "baseline")]), statistics.median(times[(case, ours)])
        print(f"{case}: {ours} / baseline (median) = {mine / base:.2f}")

    # -- the one-shot flow against the broker process ---------------------------------------------
    import numpy as np
    from safetensors.numpy import save_file
    from tests.e2e.broker_fixture import running_broker

    from weightvault.client.broker import SampleAttester
    from weightvault.crypto.keywrap import HPKEKem

    plain = work / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    (work / "milan.pem").write_bytes(milan.chain_pem)
    extra = (
        f'[verifiers.sev_snp]\ncert_chains = ["{work / "milan.pem"}"]\nmeasurements = ["{"11" * 48}"]\n'
        f"test_roots = true\n{section}"
    )
    allow = ["insecure-sample", "attestation-token", "sev-snp", "nvidia-gpu", "composite"]
    with running_broker(
        work, plain, extra_config=extra, allow=allow, rate=(1e5, 100_000), challenge_ttl_seconds=30
    ) as broker:
        policy = {
            "verifiers": {"allOf": ["sev-snp", "nvidia-gpu"]},
            "resources": ["globex/models/*"],
            "rule": {"allOf": [{"claim": "gpu.count", "equals": args.gpus}, {"claim": "gpu.cc_mode", "equals": "on"}]},
        }
        broker.client("globex-admin").put_policy("globex", "open", policy)
        flows: dict[str, tuple[Any, Any, str]] = {
            "insecure-sample": (broker.client("acme-wl"), SampleAttester(), "acme/models/small@1"),
            f"SNP + {args.gpus} GPUs": (
                broker.client("globex-wl"),
                CompositeAttester(Guest(), MadeGpus(gpus)),
                "globex/models/small@1",
            ),
        }
        latencies: dict[str, list[float]] = {name: [] for name in flows}
        for client, attester, resource in flows.values():  # warm both
            client.attest(attester, kem=HPKEKem.X25519, release=resource)[0].close()
        stop = time.perf_counter() + args.seconds * len(flows)
        while time.perf_counter() < stop:
            for name, (client, attester, resource) in flows.items():  # interleaved
                t0 = time.perf_counter()
                session, released = client.attest(attester, kem=HPKEKem.X25519, release=resource)
                latencies[name].append(time.perf_counter() - t0)
                session.close()
                assert released is not None
    print(f"\none-shot challenge + attest + release over HTTP (X25519 KEM), {args.seconds:.0f} s each, interleaved")
    print(f"{'evidence':<18} {'count':>6} {'p50':>9} {'p99':>9}")
    for name, values in latencies.items():
        ordered = sorted(values)
        p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
        print(f"{name:<18} {len(values):>6} {statistics.median(values) * 1e3:>7.1f}ms {p99 * 1e3:>7.1f}ms")
    floor = statistics.median(latencies["insecure-sample"])
    mine = statistics.median(latencies[f"SNP + {args.gpus} GPUs"])
    print(f"composite p50 = {mine * 1e3:.1f} ms (goal <= 50 ms), {mine / floor:.2f}x the insecure-sample flow")


if __name__ == "__main__":
    main()
