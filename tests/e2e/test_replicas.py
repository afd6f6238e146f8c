"""Drills: two broker replicas over one PostgreSQL database under release load; one is killed.

Two ``weightvault broker serve`` processes share one database and its audit log
(``broker init --replicated``). 16 clients attest and release in a loop, each on its
own replica; a client whose request fails (connection refused or reset, or a 503)
retries once on the other replica and stays there. Two kills, ``kill -9`` each:

1. **a follower** (the replica that does not hold the sequencer's lease);
2. **the sequencer**, under load, so in the middle of a group commit; the follower
   takes the lease over once it expires (``lease_ttl_s``, 5 s by default).

Checked after each: no release failed beyond its one retry, every key released is
the model's; and at the end, over the whole log: it verifies end to end (fsck of
every entry, and ``weightvault audit monitor`` over the tiles API, which checks
every release's intent and policy decision), no challenge was consumed twice, every
acknowledged release has its durable intent, the second ``log.handover`` names the
dead sequencer, and the hand-off queue is empty.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
import pytest
from safetensors.numpy import save_file

from tests.databases import PostgresCluster
from tests.e2e.broker_fixture import running_broker
from tests.e2e.servers import PROCESSES, serve_broker
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.pgstorage import PostgresLogStorage, libpq_url
from weightvault.client.broker import BrokerClient, SampleAttester
from weightvault.errors import UnavailableError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.drill]

RESOURCE = "acme/models/small@1"
CLIENTS = 16
ORIGIN = "weightvault-broker/audit"


@dataclass
class Load:
    released: list[tuple[float, int, str]] = field(default_factory=list)  # (when, retries, jti)
    failed: list[BaseException] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)


def _run_load(urls: list[str], token: str, expected: bytes, kill: Callable[[], None]) -> tuple[Load, float]:
    """Load both replicas, kill one after 3 s, keep going until releases have resumed for 3 s."""
    load = Load()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        clients = {u: BrokerClient(u, token) for u in urls}
        mine = urls[i % 2]
        try:
            while not stop.is_set():
                for retries, url in enumerate((mine, *(u for u in urls if u != mine))):
                    try:
                        session, _ = clients[url].attest(SampleAttester())
                        keys = clients[url].release(session, RESOURCE)
                    except UnavailableError as exc:
                        if retries == 1:
                            with lock:
                                load.failed.append(exc)
                        continue
                    assert keys.file_key is not None
                    assert keys.file_key.reveal() == expected
                    with lock:
                        load.released.append((time.monotonic(), retries, session.jti))
                    mine = url  # a client that failed over stays on the replica that answered
                    break
        except BaseException as exc:  # reported by the main thread
            load.unexpected.append(exc)
        finally:
            for client in clients.values():
                client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(3)
    killed_at = time.monotonic()
    kill()
    deadline = killed_at + 60
    while time.monotonic() < deadline and not any(w > killed_at + 3 for w, _, _ in load.released):
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    return load, killed_at


def _kill(url: str) -> None:
    proc = PROCESSES[url]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _holder(url: str) -> str:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute("SELECT holder FROM audit_head").fetchone()
    assert row is not None
    return str(row[0])


def _check(load: Load, killed_at: float, what: str) -> None:
    assert not load.unexpected, load.unexpected[:3]
    assert not load.failed, f"{len(load.failed)} releases failed after their retry: {load.failed[:3]}"
    after = [w for w, _, _ in load.released if w > killed_at]
    assert after, f"no release after the {what} was killed"
    gaps = sorted(w for w, _, _ in load.released)
    stall = max((b - a for a, b in itertools.pairwise(gaps)), default=0.0)
    retried = sum(1 for _, r, _ in load.released if r)
    print(
        f"\n{what} killed: {len(load.released)} releases, {retried} after one retry, none failed; "
        f"longest pause between two releases {stall:.2f} s"
    )


def test_replicas_survive_kill_9_of_a_follower_and_of_the_sequencer(tmp_path: Path) -> None:
    cluster = PostgresCluster(durable=True).init().start()
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    try:
        database = cluster.create_database()
        with (
            # Challenges live 30 s (the tests' usual 3 s is shorter than a takeover).
            running_broker(
                tmp_path,
                plain,
                database_url=database,
                replicated=True,
                rate=(1e5, 1_000_000),
                challenge_ttl_seconds=30,
            ) as broker,
            ExitStack() as stack,
        ):
            expected = broker.file_keys["acme"].reveal()
            token = broker.tokens["acme-wl"]
            r1 = broker.url
            assert _holder(database).startswith("r1/")
            r2 = stack.enter_context(serve_broker(broker.base, replica="r2"))

            # 0. A token key rotated on r1 signs there and verifies on r2 at once.
            broker.client("operator").rotate_token_key()
            with BrokerClient(r1, token) as on_r1, BrokerClient(r2, token) as on_r2:
                session, _ = on_r1.attest(SampleAttester())
                keys = on_r2.release(session, RESOURCE)
            assert keys.file_key is not None
            assert keys.file_key.reveal() == expected

            # 1. The follower dies.
            load, killed_at = _run_load([r1, r2], token, expected, lambda: _kill(r2))
            _check(load, killed_at, "follower")
            released = list(load.released)

            # 2. The follower is back (a new process); the sequencer dies mid-commit.
            r2 = stack.enter_context(serve_broker(broker.base, replica="r2"))
            assert _holder(database).startswith("r1/")
            load, killed_at = _run_load([r1, r2], token, expected, lambda: _kill(r1))
            _check(load, killed_at, "sequencer")
            released += load.released
            assert _holder(database).startswith("r2/")
            killed_wall = time.time() - (time.monotonic() - killed_at)

            # The whole log, as an auditor sees it through the surviving replica.
            monitor = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "weightvault",
                    "audit",
                    "monitor",
                    "--url",
                    f"{r2}/v1/audit",
                    "--token",
                    broker.tokens["operator"],
                    "--log-key",
                    (broker.base / "keys" / "audit-log.key.vkey").read_text().strip(),
                    "--max-open",
                    "3600",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert monitor.returncode == 0, monitor.stdout + monitor.stderr
            with LogReader(PostgresLogStorage(database, ORIGIN)) as log:
                assert log.fsck() == log.size
                events = [e for _, e in log.events()]
            challenges = [e.resource for e in events if e.type == "attest.pass"]
            assert len(challenges) == len(set(challenges)), "a challenge was consumed twice"
            intents = {e.details["jti"] for e in events if e.type == "key.release.intent"}
            missing = [jti for _, _, jti in released if jti not in intents]
            assert not missing, f"{len(missing)} acknowledged releases have no durable intent"
            handovers = [e for e in events if e.type == "log.handover"]
            assert handovers[-1].details["holder"].startswith("r2/")
            assert handovers[-1].details["previous"].startswith("r1/")
            takeover = handovers[-1].ts / 1000 - killed_wall
            print(f"sequencer takeover: r2's log.handover {takeover:.2f} s after the kill (lease 5 s)")
            assert takeover < 10
            open_intents = len(intents) - sum(1 for e in events if e.type == "key.release.done")
            print(
                f"log: {len(events)} entries, {len(handovers)} handovers, {len(released)} releases acknowledged, "
                f"each with its intent; {open_intents} intents without their done (queued only in the killed "
                "sequencer's memory)"
            )
            with psycopg.connect(libpq_url(database), autocommit=True) as conn:
                assert conn.execute("SELECT COUNT(*) FROM audit_handoff").fetchone() == (0,)
    finally:
        cluster.destroy()
