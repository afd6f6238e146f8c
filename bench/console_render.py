"""Console render benchmark: the main pages' time to first render in headless Chromium, at 10^5 releases.

Two brokers run side by side, each a real process with its own SQLite database and log:

* ``baseline``: a tenant with ``--baseline-releases`` release decisions (100);
* ``ours``: the same tenant with ``--releases`` release decisions (10^5), plus one attestation
  per ten releases.

An auditor signs in to each console in Debian's headless Chromium (Playwright). In each
round, for each page, the two brokers are measured one after the other (interleaved).
Per page load: ``fcp``, the first contentful paint from the navigation's start (what the
issue calls time to first render), and ``server``, the time to the response's last byte.
For the event page, ``proof`` is the time the browser takes to fetch the proof and check
it with WebCrypto (signature and inclusion proof). Goal from issue 17: pages render in
under 300 ms with 10^5 releases.

Usage: python bench/console_render.py [--releases 100000] [--baseline-releases 100] [--rounds 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

PAGES = ("releases", "audit", "devices", "models", "policies", "event")


def _populate(base: Path, releases: int) -> int:
    """Append ``releases`` release decisions (and attestations) of tenant acme to the broker's log; returns
    the index of the newest decision."""
    from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner
    from weightvault.auditlog.log import LogConfig

    signer = NoteSigner.from_skey((base / "keys" / "audit-log.key").read_text().strip())

    def event(i: int) -> AuditEvent:
        if i % 11 == 10:
            return AuditEvent(
                type="attest.pass",
                tenant="acme",
                actor=f"wl{i % 40}",
                resource=f"challenge:{i}",
                decision="pass",
                details={"device": f"gpu-{i % 8}", "verifier": "insecure-sample"},
            )
        return AuditEvent(
            type="policy.decision",
            tenant="acme",
            actor=f"wl{i % 40}",
            resource=f"acme/models/m{i % 20}@1",
            decision="allow" if i % 50 else "deny",
            policy_version=1,
            details={"device": f"gpu-{i % 8}", "verifier": "insecure-sample", "jti": f"j{i}"},
        )

    total = releases + releases // 10
    last = 0
    with AuditLog(base / "data" / "audit.db", signer, config=LogConfig(batch_max=1024, batch_delay_s=0.002)) as log:
        done = 0
        while done < total:
            chunk = min(20_000, total - done)
            futures = [log.submit(event(done + i)) for i in range(chunk)]
            for f in futures:
                f.result()
            done += chunk
        for index, e in log.recent(tenant="acme", type_prefix="policy.decision", limit=1):
            last = index
            _ = e
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=100_000)
    parser.add_argument("--baseline-releases", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench.cpu_load import cpu_model
    from tests.e2e.browser import chromium
    from tests.e2e.servers import serve_broker

    from weightvault.client.broker import BrokerClient

    work = Path(tempfile.mkdtemp(prefix="wv-console-bench-"))
    sizes = {"baseline": args.baseline_releases, "ours": args.releases}
    bases: dict[str, Path] = {}
    tokens: dict[str, str] = {}
    newest: dict[str, int] = {}
    try:
        for name, count in sizes.items():
            base = work / name
            subprocess.run(
                [sys.executable, "-m", "weightvault", "broker", "init", str(base), "--insecure-sample"],
                check=True,
                capture_output=True,
            )
            with serve_broker(base) as url, BrokerClient(url, (base / "operator.token").read_text().strip()) as op:
                op.create_tenant("acme")
                for g in range(8):
                    op.add_device(f"gpu-{g}", "insecure-sample", ["acme"])
                tokens[name] = op.create_principal("acme-auditor", "auditor", "acme")
            t0 = time.perf_counter()
            newest[name] = _populate(base, count)
            print(f"{name}: {count} releases appended in {time.perf_counter() - t0:.1f} s", flush=True)
            bases[name] = base

        results: dict[tuple[str, str, str], list[float]] = {}
        with ExitStack() as stack:
            urls = {name: stack.enter_context(serve_broker(base, timeout_s=120)) for name, base in bases.items()}
            browser = stack.enter_context(chromium())
            pages: dict[str, Any] = {}
            for name, url in urls.items():
                page = browser.new_context().new_page()
                page.goto(f"{url}/console/login")
                page.fill("#token", tokens[name])
                page.click("#signin")
                page.wait_for_url(f"{url}/console/")
                pages[name] = page
            for _ in range(args.rounds + 1):  # the first round warms and is dropped
                for view in PAGES:
                    for name, url in urls.items():
                        page = pages[name]
                        path = f"audit/{newest[name]}" if view == "event" else view
                        start = time.perf_counter()
                        page.goto(f"{url}/console/t/acme/{path}", wait_until="load")
                        if view == "event":
                            page.wait_for_selector("#proof[data-result]")
                            proof = time.perf_counter() - start
                            assert page.get_attribute("#proof", "data-result") == "verified"
                        timing = page.evaluate(
                            "() => { const n = performance.getEntriesByType('navigation')[0];"
                            " const p = performance.getEntriesByName('first-contentful-paint')[0];"
                            " return [n.responseEnd - n.startTime, p ? p.startTime : n.domContentLoadedEventEnd]; }"
                        )
                        results.setdefault((view, name, "server"), []).append(timing[0] / 1000)
                        results.setdefault((view, name, "fcp"), []).append(timing[1] / 1000)
                        if view == "event":
                            results.setdefault((view, name, "proof"), []).append(proof)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cut(values: list[float]) -> list[float]:
        return values[len(values) // (args.rounds + 1) :]  # drop the warm-up round

    print(f"\nCPU: {cpu_model()}; Chromium headless; {args.rounds} rounds, interleaved per page")
    print(f"baseline: {args.baseline_releases} releases; ours: {args.releases} releases (same tenant, same pages)")
    print(f"{'page':10} {'measure':7} {'baseline min/median ms':>24} {'ours min/median ms':>22} {'ratio':>7}")
    for view in PAGES:
        for measure in ("server", "fcp", "proof"):
            if (view, "ours", measure) not in results:
                continue
            b, o = cut(results[(view, "baseline", measure)]), cut(results[(view, "ours", measure)])
            bm, om = statistics.median(b), statistics.median(o)
            print(
                f"{view:10} {measure:7} {min(b) * 1e3:11.1f} / {bm * 1e3:7.1f}    {min(o) * 1e3:9.1f} / {om * 1e3:7.1f}"
                f" {om / bm:7.2f}x"
            )
    worst = max(statistics.median(cut(results[(v, "ours", "fcp")])) for v in PAGES)
    print(f"slowest page's median first render at {args.releases} releases: {worst * 1e3:.0f} ms (goal: < 300 ms)")


if __name__ == "__main__":
    main()
