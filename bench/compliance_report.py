"""Compliance report benchmark: build a report over a log of 10^6 events, its size, and its verification.

The log (fsync on, group commit) holds a broker's mix of events for 16 tenants: attestations,
releases (one in a thousand on the insecure-sample verifier), gateway requests and budget
alerts, model registrations, device changes, sentinel alerts and containment. In each round,
interleaved:

* ``baseline``: reading and decoding every event of the log once (what ``audit export
  --format jsonl`` does, without writing), the floor for anything that reads the whole log;
* ``report``: ``build_report`` for the whole broker (read once, select, prove, assess).

Then the report's size as JSON and as HTML, and ``verify_report``'s time. Goal from issue 17:
the report builds in under 60 s at 10^6 events.

Usage: python bench/compliance_report.py [--entries 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench.cpu_load import cpu_model

    from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner, WitnessPolicy
    from weightvault.auditlog.log import LogConfig, LogReader
    from weightvault.compliance.html import render_html
    from weightvault.compliance.report import build_report, verify_report
    from weightvault.crypto.signing import Ed25519Signer

    work = Path(tempfile.mkdtemp(prefix="wv-report-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    signer = NoteSigner("bench.weightvault/audit", Ed25519Signer.generate())

    def event(i: int) -> AuditEvent:  # noqa: PLR0911 - one event kind per branch
        tenant = f"t{i % 16}"
        kind = i % 100
        if kind < 40:
            return AuditEvent(
                type="gateway.request",
                tenant=tenant,
                actor=f"app{i % 300}",
                resource=f"{tenant}/models/m{i % 50}@1",
                decision="allow",
                details={"bytes_out": 2048 + i % 997, "key_id": f"k{i % 300}", "endpoint": "/v1/embeddings"},
            )
        if kind < 60:
            return AuditEvent(
                type="attest.pass",
                tenant=tenant,
                actor=f"wl{i % 1000}",
                resource=f"challenge:{i}",
                decision="pass",
                details={"device": f"dev-{i % 200}", "verifier": "tpm"},
            )
        if kind < 80:
            verifier = "insecure-sample" if i % 1000 == 79 else "tpm"
            return AuditEvent(
                type="key.release.done",
                tenant=tenant,
                actor=f"wl{i % 1000}",
                resource=f"{tenant}/models/m{i % 50}@1",
                decision="done",
                details={"device": f"dev-{i % 200}", "verifier": verifier},
            )
        if kind < 90:
            return AuditEvent(type="challenge.issued", tenant=tenant, actor=f"wl{i % 1000}", resource=f"challenge:{i}")
        if kind < 93:
            return AuditEvent(
                type="model.register.done",
                tenant=tenant,
                actor="pub",
                resource=f"{tenant}/models/m{i % 50}@1",
                details={"policy": "p", "tags": {"honeypot": "true"} if i % 50 == 7 else {}},
            )
        if kind < 96:
            return AuditEvent(
                type="device.activate.done",
                tenant="-",
                actor="op",
                resource=f"device:dev-{i % 200}",
                details={"status": "active"},
            )
        if kind < 98:
            return AuditEvent(
                type="gateway.budget.alert",
                tenant=tenant,
                actor=f"app{i % 300}",
                resource=f"{tenant}/models/m{i % 50}@1",
                decision="allow",
                details={"scope": "key", "subject": f"k{i % 300}", "window": "hour", "spent": 800, "limit": 1000},
            )
        if kind < 99:
            return AuditEvent(
                type="sentinel.alert",
                tenant=tenant,
                actor="sentinel",
                resource="sentinel:bulk-release",
                decision="alert",
                details={"rule": "bulk-release"},
            )
        return AuditEvent(
            type="containment.hold.done",
            tenant=tenant,
            actor="sentinel",
            resource=f"principal:wl{i % 1000}",
            decision="done",
            details={"kind": "principal", "target": f"wl{i % 1000}"},
        )

    path = work / "audit.db"
    t0 = time.perf_counter()
    with AuditLog(path, signer, config=LogConfig(batch_max=1024, batch_delay_s=0.002)) as log:
        log.append(
            AuditEvent(
                type="tenant.change.done", tenant="t0", actor="op", resource="tenant:t0", details={"op": "create"}
            )
        )
        done = 1
        while done < args.entries:
            chunk = min(50_000, args.entries - done)
            futures = [log.submit(event(done + i)) for i in range(chunk)]
            for f in futures:
                f.result()
            done += chunk
        log.publish_now()
    print(f"wrote {args.entries:,} events in {time.perf_counter() - t0:.0f} s", flush=True)

    baseline, ours = [], []
    doc: dict[str, object] = {}
    for _ in range(args.rounds):
        with LogReader.open(path, signer.name) as reader:
            t0 = time.perf_counter()
            count = sum(1 for _ in reader.events())
            baseline.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            doc = build_report(reader, now_ms=int(time.time() * 1000) + 1000)
            ours.append(time.perf_counter() - t0)
    as_json = json.dumps(doc, sort_keys=True).encode()
    page = render_html(doc).encode()
    t0 = time.perf_counter()
    verified = verify_report(doc, signer.verifier, WitnessPolicy({}, {}, "none"), now=int(time.time()))
    verify_s = time.perf_counter() - t0
    print(f"\ncompliance report over a log of {count:,} events, {args.rounds} rounds interleaved, on {cpu_model()}")
    print(f"{'method':<44} {'min s':>8} {'median s':>9}")
    print(f"{'baseline: read and decode every event':<44} {min(baseline):>8.1f} {statistics.median(baseline):>9.1f}")
    print(f"{'report: build (read, select, prove, assess)':<44} {min(ours):>8.1f} {statistics.median(ours):>9.1f}")
    print(
        f"report / baseline (median) = {statistics.median(ours) / statistics.median(baseline):.2f}; goal: build < 60 s"
    )
    print(
        f"report size: {len(as_json) / 1024:.0f} KiB JSON, {len(page) / 1024:.0f} KiB HTML; "
        f"{verified.evidence} events cited; verify {verify_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
