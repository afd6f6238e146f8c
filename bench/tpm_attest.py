"""TPM attestation benchmark: swtpm devices against the real broker process on loopback.

Reports, in one run:

* enrolment time per device (EK certificate chain, AK checks, MakeCredential,
  ActivateCredential on the TPM, activation);
* the one-shot challenge -> TPM2_Quote -> attest -> release latency, p50 and p99, for
  one device sequentially and for 8 devices (8 swtpm processes) concurrently, next to
  the same flow with the insecure-sample verifier as the baseline (no TPM, no quote), and
  the ratio. Target: TPM p50 <= 25 ms sequentially.

Usage: python bench/tpm_attest.py [--seconds 5] [--devices 8]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench._broker import SAMPLE_RULE, TPM_RULE, enrol_measured_tpm, publish, tenant_clients
    from tests.e2e.servers import serve_broker, set_rate_limit
    from tests.e2e.swtpm import SWTPM, make_template

    from weightvault.attestation.tpm.attester import TPMAttester
    from weightvault.client.broker import BrokerClient, SampleAttester
    from weightvault.crypto.keywrap import HPKEKem

    work = Path(tempfile.mkdtemp(prefix="wv-tpm-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # this run's scratch directory
    template = make_template(work, "manufacturer")
    base = work / "broker"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "weightvault",
            "broker",
            "init",
            str(base),
            "--insecure-sample",
            "--tpm-roots",
            str(template.root_cert),
            "--tpm-roots",
            str(template.issuer_cert),
        ],
        check=True,
        capture_output=True,
    )
    set_rate_limit(base, 100_000, 100_000)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve_broker(base))
        op, admin, pub = tenant_clients(url, base)
        tokens = [op.create_principal(f"wl{i}", "workload", "bench") for i in range(args.devices)]
        attesters: list[Any] = []
        enrol_times = []
        for i in range(args.devices):
            tpm = SWTPM(template.manufacture(work / f"tpm{i}")).start()
            stack.callback(tpm.stop)
            attester = stack.enter_context(TPMAttester.open(tpm.tcti))
            t0 = time.perf_counter()
            enrol_measured_tpm(op, attester, f"dev{i}")
            enrol_times.append(time.perf_counter() - t0)
            attesters.append(attester)
        publish(admin, pub, "tpm", "tpm", TPM_RULE)
        publish(admin, pub, "sample", "insecure-sample", SAMPLE_RULE)

        def run(kind: str, clients: int) -> tuple[list[float], float]:
            latencies: list[float] = []
            lock = threading.Lock()
            stop = time.perf_counter() + args.seconds

            def worker(i: int) -> None:
                client = BrokerClient(url, tokens[i])
                attester = attesters[i] if kind == "tpm" else SampleAttester()
                device = f"dev{i}" if kind == "tpm" else None
                mine = []
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    session, released = client.attest(
                        attester, kem=HPKEKem.X25519, device_id=device, release=f"bench/models/{kind}@1"
                    )
                    mine.append(time.perf_counter() - t0)
                    session.close()
                    assert released is not None
                with lock:
                    latencies.extend(mine)
                client.close()

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sorted(latencies), len(latencies) / (time.perf_counter() - t0)

        run("tpm", 1)  # warm up
        results = {(kind, n): run(kind, n) for n in (1, args.devices) for kind in ("sample", "tpm")}
        for c in (op, admin, pub):
            c.close()

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms"

    print(f"\nTPM attestation, swtpm + real broker on loopback, {args.seconds:.0f} s per run")
    print(
        f"enrolment (EK chain, AK checks, MakeCredential, ActivateCredential): p50 {ms(statistics.median(enrol_times))}"
    )
    print("one-shot challenge + attest + release (X25519 KEM):")
    print(f"{'clients':>8} {'verifier':>16} {'attests/s':>10} {'p50':>10} {'p99':>10} {'p50 ratio':>10}")
    for n in (1, args.devices):
        base_p50 = statistics.median(results[("sample", n)][0])
        for kind in ("sample", "tpm"):
            lat, rate = results[(kind, n)]
            p50, p99 = statistics.median(lat), lat[max(0, int(len(lat) * 0.99) - 1)]
            label = "insecure-sample" if kind == "sample" else "tpm (swtpm)"
            print(f"{n:>8} {label:>16} {rate:10.0f} {ms(p50):>10} {ms(p99):>10} {p50 / base_p50:>9.2f}x")


if __name__ == "__main__":
    main()
