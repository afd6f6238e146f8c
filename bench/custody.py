"""Custody and approval benchmark.

Reports, in one run:

* unseal compute for 3-of-5: a bare Shamir combine (Vault's level: no integrity),
  next to our full ceremony (custodian side: decrypt the delivered share, encrypt it
  to the ceremony key, sign; broker side: verify the signature, decrypt, check the
  commitment, combine, check the KCV), and the ratio;
* the approval round trip through the real server on loopback: open a request, two
  approvers fetch it, check its digest and sign, then the approved operation runs
  (p50 and p99), next to the same operation without an approval rule, and the ratio.

Usage: python bench/custody.py [--rounds 30]
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
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench._broker import init_broker
    from tests.e2e.servers import serve_broker, set_rate_limit

    from weightvault.client.broker import BrokerClient
    from weightvault.crypto.secret import random_bytes
    from weightvault.custody import shamir
    from weightvault.custody.ceremony import Ceremony, prepare_submission
    from weightvault.custody.person import PersonKey
    from weightvault.custody.shares import deal, open_delivered
    from weightvault.errors import ApprovalRequiredError

    people = [PersonKey.generate(f"c{i}") for i in range(5)]
    bare, full = [], []
    for _ in range(args.rounds):
        rk = random_bytes(32)
        shares = shamir.split(rk, 5, 3)
        t0 = time.perf_counter()
        assert rk == shamir.combine(shares[:3])
        bare.append(time.perf_counter() - t0)
        share_set, delivered = deal(rk, 3, [p.public for p in people])
        ceremony = Ceremony.open("bench", "unseal", share_set, {}, now=int(time.time()), ttl=600)
        t0 = time.perf_counter()
        for person in people[:3]:
            share = open_delivered(person, share_set.id, delivered[person.id])
            sealed, signature = prepare_submission(person, ceremony.terms, share)
            ceremony.submit(person.id, sealed, signature, int(time.time()))
        assert rk == ceremony.finish()
        full.append(time.perf_counter() - t0)

    work = Path(tempfile.mkdtemp(prefix="wv-custody-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # this run's scratch directory
    base = work / "broker"
    init_broker(base)
    set_rate_limit(base, 100_000, 100_000)
    approvers = {n: PersonKey.generate(n) for n in ("alice", "bob")}
    with serve_broker(base) as url:
        op = BrokerClient(url, (base / "operator.token").read_text().strip())
        op.create_tenant("gated")
        op.create_tenant("open")
        clients = {n: BrokerClient(url, op.create_principal(n, "approver")) for n in approvers}
        admins = {t: BrokerClient(url, op.create_principal(f"{t}-admin", "tenant-admin", t)) for t in ("gated", "open")}
        op.put_approval_policy(
            {
                "approvers": {
                    n: {"signing": k.public.to_json()["signing"], "hpke": k.public.to_json()["hpke"]}
                    for n, k in approvers.items()
                },
                "groups": {"sec": list(approvers)},
                "rules": [
                    {"op": "policy.change", "tenants": ["gated"], "require": [{"group": "sec", "count": 2}]},
                    {"op": "approval.policy.change", "require": [{"group": "sec", "count": 2}]},
                ],
            }
        )

        def doc(i: int, tenant: str) -> dict[str, object]:
            return {
                "verifiers": ["insecure-sample"],
                "resources": [f"{tenant}/models/*"],
                "rule": {"claim": "result.age_seconds", "lessOrEquals": 300 + i},
            }

        plain, gated = [], []
        for i in range(args.rounds):
            t0 = time.perf_counter()
            admins["open"].put_policy("open", "p", doc(i, "open"))
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                admins["gated"].put_policy("gated", "p", doc(i, "gated"), approval="new")
            except ApprovalRequiredError as exc:
                request_id = str((exc.request or {})["id"])
            for name, key in approvers.items():
                clients[name].sign_approval(request_id, key)
            admins["gated"].put_policy("gated", "p", doc(i, "gated"), approval=request_id)
            gated.append(time.perf_counter() - t0)
        for c in (op, *clients.values(), *admins.values()):
            c.close()

    def ms(values: list[float], q: float = 0.5) -> float:
        ordered = sorted(values)
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    print(f"\nunseal compute, 3 of 5 shares, {args.rounds} rounds")
    b, f = statistics.median(bare), statistics.median(full)
    print(f"  bare Shamir combine (no integrity)           p50 {b * 1000:8.2f} ms")
    print(f"  full ceremony (HPKE, Ed25519, commitments, KCV) p50 {f * 1000:8.2f} ms   ratio {f / b:6.1f}x")
    print(f"\npolicy change through the real server, {args.rounds} rounds")
    print(f"  no approval rule             p50 {ms(plain):7.1f} ms  p99 {ms(plain, 0.99):7.1f} ms")
    print(
        f"  2-of-2 approval round trip   p50 {ms(gated):7.1f} ms  p99 {ms(gated, 0.99):7.1f} ms"
        f"   ratio {statistics.median(gated) / statistics.median(plain):5.1f}x"
    )
    print("  (round trip: request, 2 x (fetch, digest check, sign, submit), approved execution)")


if __name__ == "__main__":
    main()
