"""Sentinel benchmark: replay throughput, and event-to-alert and alert-to-hold latency against a live broker.

Replay: one simulated scenario (``weightvault sentinel simulate``) is read line by line,
interleaved round by round, by the baseline (``json.loads`` of each line: the least any
consumer of the export pays) and by the sentinel (every detector, the learned model
included). Reported: events per second, min and median over rounds, and the ratio.

Live: a real broker process on loopback (insecure-sample verifier), the sentinel
following its tiles API in this process (``LiveSentinel``, polling every 0.2 s), and
``--touches`` workloads that each touch a honeypot model once. Reported: the time from
each attack event's ``ts`` to its ``sentinel.alert`` being recorded, and from the alert
to the broker's hold on the principal, p50 and p90.

    python bench/sentinel.py [--rounds 5] [--days 28] [--touches 10]
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _p90(values: list[float]) -> float:
    """The 90th percentile by nearest rank (of at least one value)."""
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def replay(days: int, rounds: int) -> None:
    import scipy.stats  # noqa: F401 - imported once, outside the timing
    import sklearn.ensemble  # noqa: F401

    from weightvault.sentinel.engine import default_config
    from weightvault.sentinel.parallel import scan_file
    from weightvault.sentinel.simulate import simulate

    text = simulate(1, days=days).events_jsonl()
    scratch = Path(tempfile.mkdtemp(prefix="wv-bench-sentinel-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    path = scratch / "events.jsonl"
    path.write_text(text)
    lines = text.encode().splitlines()
    config = default_config()
    rates: dict[str, list[float]] = {"json.loads only (baseline)": [], "sentinel, 1 process": [],
                                     "sentinel, 2 processes": []}  # fmt: skip
    counts = set()
    for _ in range(rounds):
        started = time.perf_counter()
        for line in lines:
            json.loads(line)
        rates["json.loads only (baseline)"].append(len(lines) / (time.perf_counter() - started))
        for jobs in (1, 2):
            started = time.perf_counter()
            alerts, _ = scan_file(path, config, jobs=jobs)
            rates[f"sentinel, {jobs} process{'es' if jobs > 1 else ''}"].append(
                len(lines) / (time.perf_counter() - started)
            )
            counts.add((jobs, len(alerts)))
    print(f"replay of {len(lines)} events ({days} simulated days, every detector), {rounds} interleaved rounds:")
    for name, values in rates.items():
        print(f"  {name:<28} events/s: min {min(values):>9,.0f}  median {statistics.median(values):>9,.0f}")
    base = statistics.median(rates["json.loads only (baseline)"])
    for jobs in (1, 2):
        name = f"sentinel, {jobs} process{'es' if jobs > 1 else ''}"
        print(f"  ratio {name} / baseline (median): {statistics.median(rates[name]) / base:.3f}")
    print(f"  alerts per run (jobs, alerts): {sorted(counts)}")


def live(touches: int) -> None:
    from bench._broker import TENANT, init_broker, publish, tenant_clients
    from tests.e2e.servers import serve_broker

    from weightvault.auditlog.follower import TileFollower
    from weightvault.auditlog.note import NoteVerifier
    from weightvault.auditlog.policy import WitnessPolicy
    from weightvault.client.broker import BrokerClient, SampleAttester
    from weightvault.errors import WeightVaultError
    from weightvault.sentinel.engine import Sentinel, default_config
    from weightvault.sentinel.live import ContainmentPolicy, LiveSentinel

    tmp = Path(tempfile.mkdtemp(prefix="wv-bench-sentinel-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    base = tmp / "broker"
    init_broker(base, "--insecure-sample")
    with serve_broker(base) as url:
        op, admin, pub = tenant_clients(url, base)
        rule = {"claim": "tenant", "equals": TENANT}
        publish(admin, pub, "real", "insecure-sample", rule)
        admin.put_policy(TENANT, "decoy", {"verifiers": ["insecure-sample"], "resources": [f"{TENANT}/models/*"],
                                            "rule": rule})  # fmt: skip
        from weightvault import FileKey

        fk = FileKey.generate()
        pub.register_model(TENANT, "decoy", "1", policy="decoy", file_key=fk, files=[], tags={"honeypot": "true"})
        sentinel_token = op.create_principal("sentinel-1", "sentinel")
        sentinel = BrokerClient(url, sentinel_token)
        workloads = [BrokerClient(url, op.create_principal(f"wl{i}", "workload", TENANT)) for i in range(touches)]
        verifier = NoteVerifier.from_vkey((base / "keys" / "audit-log.key.vkey").read_text().strip())
        import httpx

        http = httpx.Client(base_url=url + "/v1/audit/", headers={"authorization": f"Bearer {sentinel_token}"})

        def fetch(path: str) -> bytes | None:
            reply = http.get(path)
            return None if reply.status_code == 404 else reply.content

        policy = ContainmentPolicy.parse(
            {"actions": [{"when": {"severity": ["critical"]}, "do": ["freeze_principal"]}]}
        )
        runner = LiveSentinel(
            Sentinel(default_config()),
            TileFollower(fetch, verifier, WitnessPolicy({}, {}, "none"), clock=time.time),
            sentinel,
            policy,
        )
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                runner.poll()
                time.sleep(0.2)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        for client in workloads:
            session, _ = client.attest(SampleAttester())
            client.release(session, f"{TENANT}/models/decoy@1").wipe()
            time.sleep(1.0)
        deadline = time.monotonic() + 30
        while runner.counters.holds < touches and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        thread.join()
        refused = 0
        for client in workloads:
            try:
                client.attest(SampleAttester())
            except WeightVaultError:
                refused += 1
        c = runner.counters
        e2a = sorted(c.event_to_alert_s)
        a2h = sorted(c.alert_to_hold_s)
        print(f"live: {touches} honeypot touches, {c.alerts_posted} alerts recorded, {c.holds} holds placed")
        print(f"  event to alert recorded: p50 {statistics.median(e2a):.3f} s  p90 {_p90(e2a):.3f} s")
        print(f"  alert to hold placed:    p50 {statistics.median(a2h):.3f} s  p90 {_p90(a2h):.3f} s")
        print(f"  frozen principals refused on their next call: {refused}/{touches}")
        for client in (op, admin, pub, sentinel, *workloads):
            client.close()
        http.close()


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--touches", type=int, default=10)
    args = parser.parse_args()
    replay(args.days, args.rounds)
    live(args.touches)


if __name__ == "__main__":
    main()
