"""The broker on SQLite against the broker on PostgreSQL, with 1 and 2 replicas: releases and attests, interleaved.

Starts real broker processes on loopback (PostgreSQL: a server this run starts, fsync on,
synchronous_commit on, on the same machine), each with the insecure-sample verifier and
one sealed model, as four deployments:

* SQLite: one broker, database and audit log in SQLite files (the embedded default);
* PostgreSQL: one broker, database on PostgreSQL, audit log in its SQLite file;
* PG log x1: one replica of ``broker init --replicated`` (the audit log in PostgreSQL too);
* PG log x2: two replicas of it; client i uses replica (i + 1) mod 2, so the single
  client of "x1" cases talks to the follower, whose events go through the hand-off queue.

Round after round in the same order, for each deployment: 1 and 16 clients release in a
loop for --seconds (a release reads the token, device, model, KEK and policy, and writes
its audit events), and 16 clients attest in a loop (each attest stores and consumes a
challenge and stores a result token). Prints releases and attests per second and the
latency p50 and p99: the lowest and the median rate over the rounds, the median
latencies, and each deployment's ratio to SQLite (medians).

Usage: python bench/storage_backends.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench._broker import init_broker, tenant_clients
    from bench.cpu_load import cpu_model
    from tests.databases import PostgresCluster
    from tests.e2e.servers import serve_broker, set_rate_limit

    from weightvault import FileKey
    from weightvault.client.broker import BrokerClient, BrokerRecipient, SampleAttester
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.sealing import seal_safetensors

    work = Path(tempfile.mkdtemp(prefix="wv-storage-bench-"))
    cluster = PostgresCluster(durable=True).init().start()
    try:
        import numpy as np
        from safetensors.numpy import save_file

        plain = work / "m.safetensors"
        save_file({"w": np.arange(1024, dtype=np.float32)}, str(plain))
        brokers: dict[str, tuple[list[str], list[str]]] = {}
        deployments: list[tuple[str, list[str], int]] = [
            ("SQLite", [], 1),
            ("PostgreSQL", ["--database-url", cluster.create_database()], 1),
            ("PG log x1", ["--database-url", cluster.create_database(), "--replicated"], 1),
            ("PG log x2", ["--database-url", cluster.create_database(), "--replicated"], 2),
        ]
        with ExitStack() as stack:
            for backend, options, replicas in deployments:
                base = work / backend.replace(" ", "-")
                init_broker(base, "--insecure-sample", *options)
                set_rate_limit(base, 1_000_000, 1_000_000)
                names = [f"r{i + 1}" for i in range(replicas)] if "--replicated" in options else [None]
                urls = [stack.enter_context(serve_broker(base, replica=name)) for name in names]
                url = urls[0]
                op, admin, pub = tenant_clients(url, base)
                tokens = [op.create_principal(f"wl{i}", "workload", "bench") for i in range(16)]
                policy = {"verifiers": ["insecure-sample"], "resources": ["bench/models/*"]}
                admin.put_policy("bench", "open", {**policy, "rule": {"claim": "tenant", "equals": "bench"}})
                fk = FileKey.generate()
                out = seal_safetensors(plain, base / "m.wvlt", file_key=fk, recipients=[BrokerRecipient(url, "x")])
                files = [{"file_id": out.file_id.hex(), "header_mac": out.header_mac.hex(), "path": "m.wvlt"}]
                pub.register_model("bench", "m", "1", policy="open", file_key=fk, files=files)
                for c in (op, admin, pub):
                    c.close()
                brokers[backend] = (urls, tokens)

            def timed(
                urls: list[str], tokens: list[str], clients: int, step: Callable[[BrokerClient, object], None]
            ) -> list[float]:
                latencies: list[float] = []
                lock = threading.Lock()
                stop = time.perf_counter() + args.seconds

                def worker(i: int) -> None:
                    client = BrokerClient(urls[(i + 1) % len(urls)], tokens[i])
                    session, _ = client.attest(SampleAttester(), kem=HPKEKem.X25519)
                    mine = []
                    while time.perf_counter() < stop:
                        t0 = time.perf_counter()
                        step(client, session)
                        mine.append(time.perf_counter() - t0)
                    with lock:
                        latencies.extend(mine)
                    client.close()

                threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return latencies

            def release(client: BrokerClient, session: object) -> None:
                client.release(session, "bench/models/m@1")  # type: ignore[arg-type]

            def attest(client: BrokerClient, _session: object) -> None:
                client.attest(SampleAttester(), kem=HPKEKem.X25519)

            cases = {"release x1": (1, release), "release x16": (16, release), "attest x16": (16, attest)}
            results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            for urls, tokens in brokers.values():  # warm up
                timed(urls, tokens, 4, release)
            for _ in range(args.rounds):
                for case, (clients, step) in cases.items():
                    for backend, (urls, tokens) in brokers.items():
                        lat = sorted(timed(urls, tokens, clients, step))
                        rate = len(lat) / args.seconds
                        p99 = lat[max(0, -(-len(lat) * 99 // 100) - 1)]
                        results.setdefault((case, backend), []).append((rate, statistics.median(lat), p99))
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nCPU: {cpu_model()}; brokers and PostgreSQL on one machine; {args.rounds} rounds of {args.seconds:g} s")
    print(f"{'case':<12} {'deployment':<11} {'min/s':>7} {'median/s':>9} {'p50':>9} {'p99':>9}")
    for case in cases:
        rates = {}
        for backend in brokers:
            runs = results[(case, backend)]
            worst = min(r[0] for r in runs)
            rate = statistics.median(r[0] for r in runs)
            p50 = statistics.median(r[1] for r in runs) * 1000
            p99 = statistics.median(r[2] for r in runs) * 1000
            rates[backend] = rate
            print(f"{case:<12} {backend:<11} {worst:>7.0f} {rate:>9.0f} {p50:>7.1f}ms {p99:>7.1f}ms")
        ratios = ", ".join(f"{b} {rates[b] / rates['SQLite']:.2f}" for b in brokers if b != "SQLite")
        print(f"{'':<12} against SQLite: {ratios}")


if __name__ == "__main__":
    main()
