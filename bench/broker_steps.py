"""Where one release and one one-shot attest spend their time: a per-step breakdown.

The broker runs in this process (``load_broker`` on a directory made by ``broker
init``, served by uvicorn on loopback in a thread), so that its steps can be timed
from inside while clients talk real HTTP to it. Each step is a function wrapped with
a timer; the table gives, per client call, how often the step ran, its median time
and its share of the call's median round trip (the baseline every step is measured
against, in the same run). Steps nest (the audit commit runs inside the durable
append it serves), so shares do not add up to 100%.

Flows, sequential, one client:

* ``release``: POST /v1/release with a result token (token check, reads, decision,
  write-ahead intent, unwrap, HPKE seal);
* ``one-shot sample``: POST /v1/challenges then /v1/attest with a release, with the
  insecure-sample verifier;
* ``one-shot tpm``: the same with a TPM quote from swtpm (skipped without swtpm).

Usage: python bench/broker_steps.py [--calls 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class Steps:
    """Timers wrapped around named functions; samples are kept per step, across threads."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self.samples[label].append(elapsed)

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def reset(self) -> None:
        with self._lock:
            self.samples.clear()

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))

    from bench._broker import SAMPLE_RULE, TPM_RULE, enrol_measured_tpm, publish, tenant_clients

    from weightvault.attestation.interfaces import BaseVerifier
    from weightvault.auditlog.log import AuditLog
    from weightvault.auditlog.storage import LogStorage, Watermark
    from weightvault.broker import release as release_module
    from weightvault.broker.approvals import ApprovalService
    from weightvault.broker.keyring import Keyring
    from weightvault.broker.release import ReleaseService
    from weightvault.broker.service import KeyBroker
    from weightvault.broker.storage.repositories import SessionRepository
    from weightvault.broker.tokens import TokenSigner
    from weightvault.client.broker import BrokerClient, SampleAttester
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.server.broker_main import load_broker

    work = Path(args.workdir or tempfile.mkdtemp(prefix="wv-broker-steps-"))
    if args.workdir is None:  # a scratch directory of this run's own: removed at exit
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    base = work / "broker"
    init = [sys.executable, "-m", "weightvault", "broker", "init", str(base), "--insecure-sample"]
    have_tpm = all(shutil.which(t) for t in ("swtpm", "swtpm_setup", "swtpm_localca"))
    template = None
    if have_tpm:
        from tests.e2e.swtpm import make_template

        template = make_template(work, "manufacturer")
        init += ["--tpm-roots", str(template.root_cert), "--tpm-roots", str(template.issuer_cert)]
    subprocess.run(init, check=True, capture_output=True)
    from tests.e2e.servers import set_rate_limit

    set_rate_limit(base, 100_000, 100_000)

    steps = Steps()
    plan = [
        (KeyBroker, "authenticate", "authenticate the caller (API token lookup)"),
        (KeyBroker, "issue_challenge", "challenge: issue (total)"),
        (SessionRepository, "add_challenge", "  store the challenge (broker db)"),
        (KeyBroker, "attest", "attest (total)"),
        (SessionRepository, "challenge", "  read the challenge (broker db)"),
        (SessionRepository, "consume_challenge", "  consume the challenge (broker db)"),
        (BaseVerifier, "verify", "  verify the evidence"),
        (TokenSigner, "issue", "  sign the result token (Ed25519)"),
        (SessionRepository, "record_attestation", "  store the token id and device state (broker db)"),
        (KeyBroker, "release", "release (total)"),
        (TokenSigner, "verify", "  verify the result token (Ed25519)"),
        (SessionRepository, "token_revoked", "  token revoked? (broker db)"),
        (ReleaseService, "_facts", "  read model, device, policy (broker db)"),
        (release_module, "decide_release", "  decide (policy evaluation)"),
        (ApprovalService, "gate", "  approval gate (broker db)"),
        (Keyring, "file_key_of", "  unwrap the file key (root -> KEK -> file key)"),
        (release_module, "hpke_seal", "  HPKE-seal the payload"),
        (AuditLog, "submit", "audit: queue an event (encode, reserve index)"),
        (AuditLog, "append", "audit: durable append (queue + wait for commit)"),
        (AuditLog, "_commit", "audit writer: one group commit (total)"),
        (AuditLog, "_sign", "  sign the checkpoint (Ed25519)"),
        (LogStorage, "append_batch", "  log db transaction (fsync)"),
        (Watermark, "advance", "  watermark (its own db)"),
        (LogStorage, "store_published", "audit publisher: store published checkpoint"),
    ]
    for owner, attr, label in plan:
        steps.wrap(owner, attr, label)

    runtime = load_broker(base / "broker.toml")
    results: dict[str, tuple[list[float], dict[str, list[float]]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(runtime.close)
        url = stack.enter_context(serve_in_thread(runtime.app()))
        op, admin, pub = tenant_clients(url, base)
        client = BrokerClient(url, op.create_principal("wl", "workload", "bench"))
        flows: list[tuple[str, Callable[[], None]]] = []
        publish(admin, pub, "sample", "insecure-sample", SAMPLE_RULE)
        session, _ = client.attest(SampleAttester(), kem=HPKEKem.X25519)

        def release() -> None:
            client.release(session, "bench/models/sample@1")

        def one_shot_sample() -> None:
            s, _ = client.attest(SampleAttester(), kem=HPKEKem.X25519, release="bench/models/sample@1")
            s.close()

        flows += [("release", release), ("one-shot sample", one_shot_sample)]
        if template is not None:
            from tests.e2e.swtpm import SWTPM

            from weightvault.attestation.tpm.attester import TPMAttester

            tpm = SWTPM(template.manufacture(work / "tpm0")).start()
            stack.callback(tpm.stop)
            attester = stack.enter_context(TPMAttester.open(tpm.tcti))
            enrol_measured_tpm(op, attester, "dev0")
            publish(admin, pub, "tpm", "tpm", TPM_RULE)

            def one_shot_tpm() -> None:
                s, _ = client.attest(attester, kem=HPKEKem.X25519, device_id="dev0", release="bench/models/tpm@1")
                s.close()

            flows.append(("one-shot tpm", one_shot_tpm))

        for name, flow in flows:
            for _ in range(20):
                flow()  # warm up
            time.sleep(0.2)  # let the last done events commit outside the measurement
            steps.reset()
            totals = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                flow()
                totals.append(time.perf_counter() - t0)
            time.sleep(0.2)
            results[name] = (totals, {k: list(v) for k, v in steps.samples.items()})
        for c in (op, admin, pub, client):
            c.close()
    steps.restore()

    def ms(x: float) -> str:
        return f"{x * 1000:7.2f}"

    print(f"\nbroker per-step breakdown: {args.calls} sequential calls per flow, real HTTP on loopback, in {work}")
    for name, (totals, samples) in results.items():
        whole = statistics.median(totals)
        print(f"\n{name}: client round trip p50 {whole * 1000:.2f} ms, min {min(totals) * 1000:.2f} ms")
        print(f"  {'step':58} {'per call':>8} {'p50 ms':>7} {'share':>6}")
        for _, _, label in plan:
            values = samples.get(label)
            if not values:
                continue
            per_call = len(values) / len(totals)
            p50 = statistics.median(values)
            print(f"  {label:58} {per_call:8.2f} {ms(p50)} {per_call * p50 / whole:6.0%}")


if __name__ == "__main__":
    main()
