"""Audit log benchmark: durable appends per second, checkpoint signing, and proofs at 10^6 entries.

Measured in one run on this machine, with fsync on (SQLite WAL, synchronous=FULL):

* durable appends per second with group commit, from many concurrent submitters
  (each append counts only once its batch is committed and the head advanced),
  and, as the baseline, one append per transaction;
* checkpoint signing rate (Ed25519 signed notes);
* inclusion- and consistency-proof generation from storage, and verification, at --entries.

Usage: python bench/audit_log.py [--entries 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

    from weightvault.auditlog import AuditEvent, AuditLog, Checkpoint, NoteSigner, sign_checkpoint
    from weightvault.auditlog.log import LogConfig
    from weightvault.auditlog.merkle import leaf_hash, verify_consistency, verify_inclusion
    from weightvault.crypto.signing import Ed25519Signer

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wv-audit-bench-"))
    if args.workdir is None:  # a scratch directory of this run's own: removed at exit
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    signer = NoteSigner("bench.weightvault/audit", Ed25519Signer.generate())

    def event(i: int) -> AuditEvent:
        return AuditEvent(
            type="key.release.intent",
            tenant=f"t{i % 16}",
            actor=f"wl:{i % 1000}",
            resource=f"t{i % 16}/models/m{i % 50}",
            refs={"decision": max(0, i - 1)},
            details={"device": f"dev-{i % 200}"},
        )

    # Baseline: one event per transaction (batch of one).
    base_path = workdir / "single.db"
    with AuditLog(base_path, signer, config=LogConfig(batch_max=1, batch_delay_s=0)) as log:
        n = 300
        t0 = time.perf_counter()
        for i in range(n):
            log.append(event(i))
        single = n / (time.perf_counter() - t0)

    # Group commit: many submitters in flight.
    path = workdir / "audit.db"
    for suffix in ("", "-wal", "-shm", ".watermark"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    rates = []
    with AuditLog(path, signer, config=LogConfig(batch_max=1024, batch_delay_s=0.002)) as log:
        done = 0
        while done < args.entries:
            chunk = min(50_000, args.entries - done)
            t0 = time.perf_counter()
            futures = [log.submit(event(done + i)) for i in range(chunk)]
            for f in futures:
                f.result()
            rates.append(chunk / (time.perf_counter() - t0))
            done += chunk
        size = log.size
        root = log.root_at(size)

        # Checkpoint signing.
        cp = Checkpoint(signer.name, size, root)
        t0 = time.perf_counter()
        for _ in range(2000):
            sign_checkpoint(cp, signer)
        signing = 2000 / (time.perf_counter() - t0)

        # Proofs at full size.
        gen, ver, cgen, cver = [], [], [], []
        for k in range(200):
            index = (k * 7919) % size
            t0 = time.perf_counter()
            proof = log.inclusion_proof(index, size)
            gen.append(time.perf_counter() - t0)
            leaf = leaf_hash(log.entry(index))
            t0 = time.perf_counter()
            verify_inclusion(index, size, leaf, proof, root)
            ver.append(time.perf_counter() - t0)
            old = 1 + (k * 104729) % (size - 1)
            t0 = time.perf_counter()
            cproof = log.consistency_proof(old, size)
            cgen.append(time.perf_counter() - t0)
            old_root = log.root_at(old)
            t0 = time.perf_counter()
            verify_consistency(old, size, old_root, root, cproof)
            cver.append(time.perf_counter() - t0)

    print(f"\naudit log benchmark, {size:,} entries, fsync on (WAL, synchronous=FULL)")
    print(f"{'measure':48} {'value':>14}")
    print(f"{'durable appends/s, one per transaction (baseline)':48} {single:14,.0f}")
    print(f"{'durable appends/s, group commit (median chunk)':48} {statistics.median(rates):14,.0f}")
    print(f"{'  ratio to baseline':48} {statistics.median(rates) / single:14.1f}")
    print(f"{'checkpoint signatures/s (Ed25519 signed note)':48} {signing:14,.0f}")
    us = 1e6
    print(f"{'inclusion proof generation, median':48} {statistics.median(gen) * us:11.0f} us")
    print(f"{'inclusion proof verification, median':48} {statistics.median(ver) * us:11.1f} us")
    print(f"{'consistency proof generation, median':48} {statistics.median(cgen) * us:11.0f} us")
    print(f"{'consistency proof verification, median':48} {statistics.median(cver) * us:11.1f} us")


if __name__ == "__main__":
    main()
