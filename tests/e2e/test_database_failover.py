"""Drill: the database's primary dies under release load, and Patroni promotes the synchronous standby.

A broker process on a Patroni pair (tests/ha.py: one etcd, a primary and a synchronous
standby on loopback, libpq's multi-host URL with ``target_session_attrs=read-write``)
serves 4 clients that attest and release in a loop, retrying what the broker answers as
retryable. The primary's node is killed (Patroni and PostgreSQL, SIGKILL). Checked:

* releases resume within 30 s of the kill, and the broker reconnects by itself;
* every failure in between is a retryable 503 (no 500, no key in a failed answer);
* nothing acknowledged is lost: every result token the broker issued before or during
  the failover still releases afterwards (a lost token row would read as revoked), and
  a principal created before the kill still authenticates.

It runs twice: with the audit log in its SQLite file, and in the database with the other
tables (replicas), where the log's sequencer must also survive the failover.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.e2e.broker_fixture import running_broker
from tests.ha import PatroniCluster, require_patroni
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.pgstorage import PostgresLogStorage
from weightvault.broker.storage.database import libpq_conninfo
from weightvault.client.broker import BrokerClient, SampleAttester, Session
from weightvault.errors import UnavailableError

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.drill]

RESOURCE = "acme/models/small@1"
CLIENTS = 4


def _retrying(fn, deadline: float, failures: list[BaseException]):  # type: ignore[no-untyped-def]
    while True:
        try:
            return fn()
        except UnavailableError as exc:
            failures.append(exc)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("replicated", [False, True], ids=["log-in-file", "log-in-database"])
def test_the_primary_dies_under_load_and_nothing_acknowledged_is_lost(tmp_path: Path, replicated: bool) -> None:
    """``log-in-database``: the audit log is in PostgreSQL too (``broker init --replicated``), so the
    primary's death also fails the sequencer's commits; it steps down, and takes the lease again
    (``log.handover``) on the promoted standby."""
    require_patroni()
    cluster = PatroniCluster()  # in a directory of its own: the postgres user cannot enter tmp_path
    plain = tmp_path / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    try:
        cluster.start()
        with running_broker(
            tmp_path,
            plain,
            database_url=cluster.url(),
            rate=(1e5, 1_000_000),
            replicated=replicated,
            challenge_ttl_seconds=30,  # the tests' usual 3 s is shorter than a failover
        ) as broker:
            expected = broker.file_keys["acme"].reveal()
            op = broker.client("operator")
            late_token = op.create_principal("acme-late", "workload", "acme")
            sessions: list[Session] = []  # every result token the broker acknowledged
            successes: list[float] = []
            failures: list[BaseException] = []
            unexpected: list[BaseException] = []
            lock = threading.Lock()
            stop = threading.Event()

            def load() -> None:
                client = BrokerClient(broker.url, broker.tokens["acme-wl"])
                try:
                    while not stop.is_set():
                        deadline = time.monotonic() + 60
                        session, _ = _retrying(lambda: client.attest(SampleAttester()), deadline, failures)
                        with lock:
                            sessions.append(session)
                        keys = _retrying(lambda s=session: client.release(s, RESOURCE), deadline, failures)
                        assert keys.file_key is not None
                        assert expected == keys.file_key.reveal()
                        with lock:
                            successes.append(time.monotonic())
                except BaseException as exc:  # reported by the main thread
                    unexpected.append(exc)
                finally:
                    client.close()

            threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(3)
            primary = cluster.primary()
            assert primary is not None
            killed_at = time.monotonic()
            cluster.kill_node(primary)
            while time.monotonic() < killed_at + 60 and not any(s > killed_at + 0.5 for s in successes):
                time.sleep(0.1)
            time.sleep(2)  # a little load on the new primary
            stop.set()
            for t in threads:
                t.join(90)
            assert not unexpected, unexpected[:3]
            resumed = [s for s in successes if s > killed_at + 0.5]
            assert resumed, f"no release after the kill; failures: {failures[-3:]}\n{cluster.logs()}"
            failover_s = resumed[0] - killed_at
            print(
                f"\nfailover: first release {failover_s:.1f} s after the kill; {len(failures)} retried failures; "
                f"{len(sessions)} result tokens issued, each released again afterwards"
            )
            assert failover_s < 30
            new_primary = cluster.primary()
            assert new_primary is not None
            assert new_primary.name != primary.name

            # Nothing acknowledged was lost on the promoted standby.
            client = broker.client("acme-wl")
            for session in sessions:
                keys = client.release(session, RESOURCE)
                assert keys.file_key is not None
                assert expected == keys.file_key.reveal()
            late = BrokerClient(broker.url, late_token)
            try:
                late.attest(SampleAttester())
            finally:
                late.close()
            if replicated:  # the log survived on the new primary, and says who sequenced it when
                with LogReader(PostgresLogStorage(libpq_conninfo(cluster.url()), "weightvault-broker/audit")) as log:
                    size = log.fsck()
                    assert size == log.size
                    handovers = [e for _, e in log.events() if e.type == "log.handover"]
                    intents = {e.details["jti"] for _, e in log.events() if e.type == "key.release.intent"}
                assert len(handovers) >= 2, "the sequencer did not take the lease again after the failover"
                print(f"log: {size} entries, {len(handovers)} handovers, {len(intents)} release intents")
    finally:
        cluster.stop()
