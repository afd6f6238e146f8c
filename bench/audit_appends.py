"""Durable audit appends per second: the log on SQLite against the log on PostgreSQL, with group commit.

Each append returns only once its event is committed (fsync on; PostgreSQL with
synchronous_commit on) and covered by a signed checkpoint. --threads callers append in a
loop for --seconds; concurrent appends share commits (group commit), so the rate grows
with the callers. Deployments, interleaved round after round:

* SQLite: :class:`AuditLog` over its file (one broker);
* PostgreSQL: :class:`ReplicatedAuditLog` holding the lease (the sequencer's path);
* PG follower: appends through a second replica, which hands each event to the sequencer
  through the durable queue and waits for its entry (two commits per event).

Prints the lowest and median rate over the rounds and the median p50/p99 append latency.
The issue's goal: at least 5,000 durable appends/s on PostgreSQL.

Usage: python bench/audit_appends.py [--seconds 3] [--rounds 3] [--threads 64]
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench.cpu_load import cpu_model
    from tests.databases import PostgresCluster

    from weightvault.auditlog.events import AuditEvent
    from weightvault.auditlog.log import AuditLog, Receipt
    from weightvault.auditlog.note import NoteSigner
    from weightvault.auditlog.pgstorage import PostgresLogStorage
    from weightvault.auditlog.replica import ReplicatedAuditLog
    from weightvault.crypto.signing import Ed25519Signer

    work = Path(tempfile.mkdtemp(prefix="wv-append-bench-"))
    cluster = PostgresCluster(durable=True).init().start()
    signer = NoteSigner("bench.example/audit", Ed25519Signer(os.urandom(32)))
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        url = cluster.create_database()
        with ExitStack() as stack:
            sqlite_log = stack.enter_context(AuditLog(work / "audit.db", signer))
            key = os.urandom(32)

            def replica(name: str) -> ReplicatedAuditLog:
                storage = PostgresLogStorage(url, signer.name)
                watermark = work / f"{name}.watermark"
                return ReplicatedAuditLog(storage, signer, replica=name, watermark_path=watermark, handoff_key=key)

            sequencer = stack.enter_context(replica("s"))
            assert sequencer.wait_sequencer(10)
            follower = stack.enter_context(replica("f"))
            logs: dict[str, Callable[[AuditEvent], Receipt]] = {
                "SQLite": sqlite_log.append,
                "PostgreSQL": sequencer.append,
                "PG follower": follower.append,
            }

            def timed(append: Callable[[AuditEvent], Receipt], seconds: float) -> list[float]:
                latencies: list[float] = []
                lock = threading.Lock()
                stop = time.perf_counter() + seconds

                def worker(i: int) -> None:
                    event = AuditEvent("test.event", "bench", f"caller-{i}", details={"n": i})
                    mine = []
                    while time.perf_counter() < stop:
                        t0 = time.perf_counter()
                        append(event)
                        mine.append(time.perf_counter() - t0)
                    with lock:
                        latencies.extend(mine)

                threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return latencies

            for append in logs.values():  # warm up
                timed(append, 0.5)
            for _ in range(args.rounds):
                for name, append in logs.items():
                    lat = sorted(timed(append, args.seconds))
                    p99 = lat[max(0, -(-len(lat) * 99 // 100) - 1)]
                    results.setdefault(name, []).append((len(lat) / args.seconds, statistics.median(lat), p99))
            size = sequencer.size
            assert sequencer.fsck() == size
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nCPU: {cpu_model()}; log, PostgreSQL and {args.threads} appending threads on one machine; "
        f"{args.rounds} rounds of {args.seconds:g} s"
    )
    print(f"{'log':<12} {'min/s':>7} {'median/s':>9} {'p50':>9} {'p99':>9}")
    rates = {}
    for name, runs in results.items():
        rates[name] = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs) * 1000
        p99 = statistics.median(r[2] for r in runs) * 1000
        print(f"{name:<12} {min(r[0] for r in runs):>7.0f} {rates[name]:>9.0f} {p50:>7.1f}ms {p99:>7.1f}ms")
    print(
        f"PostgreSQL / SQLite = {rates['PostgreSQL'] / rates['SQLite']:.2f}; "
        f"goal >= 5000/s on PostgreSQL: {'met' if rates['PostgreSQL'] >= 5000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
