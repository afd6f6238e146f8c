"""Two brokers over one PostgreSQL database (replicas): what one does to the token signing keys holds on
the other at its next attestation or release, and rate limits are one budget for both. Runs in the
``--database postgresql`` pass."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import databases
from tests.unit.broker.conftest import Clock
from weightvault.attestation.registry import VerifierRegistry
from weightvault.attestation.unsafe import UnsafeSampleVerifier
from weightvault.auditlog import AuditLog, NoteSigner
from weightvault.broker.config import BrokerConfig
from weightvault.broker.keystore import RootKey
from weightvault.broker.service import KeyBroker, open_broker
from weightvault.broker.tokens import TokenSigner
from weightvault.crypto.keywrap import HPKEKem
from weightvault.crypto.signing import Ed25519Signer
from weightvault.format.recipients import HPKEIdentity


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[KeyBroker, KeyBroker, Clock]]:
    if databases.backend() != "postgresql":
        pytest.skip("replicas share a PostgreSQL database: runs in the --database postgresql pass")
    url = databases.fresh_url(tmp_path)
    root, seed, log_key = RootKey.generate().reveal(), os.urandom(32), Ed25519Signer.generate()
    registration = HPKEIdentity.generate(HPKEKem.X25519)
    clock = Clock()
    with ExitStack() as stack:
        brokers = []
        for name in ("a", "b"):
            audit = AuditLog(tmp_path / f"{name}.db", NoteSigner("broker.test/audit", log_key), clock=clock)
            stack.callback(audit.close)
            broker = open_broker(
                url,
                RootKey(root),
                TokenSigner("broker.test", Ed25519Signer(seed)),
                VerifierRegistry({"insecure-sample": UnsafeSampleVerifier()}),
                audit,
                registration_key=registration,
                config=BrokerConfig(base=tmp_path, broker_id="broker.test"),
                clock=clock,
            )
            stack.callback(broker.close)
            brokers.append(broker)
        yield brokers[0], brokers[1], clock


def test_a_rotation_on_one_replica_signs_and_verifies_on_the_other(
    replicas: tuple[KeyBroker, KeyBroker, Clock],
) -> None:
    a, b, _ = replicas
    assert b.keyring.shared
    kid = a.rotation.rotate_token_key("operator", gated=False)
    assert kid not in b.keyring.signer.public_keys()
    b.keyring.sync_signing_keys()
    assert kid in b.keyring.signer.public_keys()
    assert b.keyring.signer.current_kid == kid  # b signs with the newest key too


def test_a_key_retired_on_one_replica_stops_verifying_on_the_other(
    replicas: tuple[KeyBroker, KeyBroker, Clock],
) -> None:
    a, b, clock = replicas
    first = a.rotation.rotate_token_key("operator", gated=False)
    b.keyring.sync_signing_keys()
    assert first in b.keyring.signer.public_keys()
    clock.now += 3600  # past a token's life: the next rotation retires the first key
    second = a.rotation.rotate_token_key("operator", gated=False)
    assert first not in a.keyring.signer.public_keys()
    assert first in b.keyring.signer.public_keys()  # until b's next attestation or release
    b.keyring.sync_signing_keys()
    assert first not in b.keyring.signer.public_keys()
    assert b.keyring.signer.current_kid == second


def test_replicas_share_one_rate_limit_per_principal(replicas: tuple[KeyBroker, KeyBroker, Clock]) -> None:
    """A burst of 4 is 4 across both replicas, not 4 on each; a refusal takes nothing; the bucket
    refills by the database's clock."""
    a, b, _ = replicas
    assert a.shares_state
    key = "principal:acme-wl"
    assert [a.take_rate(key, 2.0, 4), b.take_rate(key, 2.0, 4), a.take_rate(key, 2.0, 4), b.take_rate(key, 2.0, 4)] == [
        True
    ] * 4
    assert not a.take_rate(key, 2.0, 4)
    assert not b.take_rate(key, 2.0, 4)
    assert a.take_rate("principal:acme-admin", 2.0, 4)  # buckets are per key
    time.sleep(0.6)  # 2 per second: one token back
    assert b.take_rate(key, 2.0, 4)
    assert not a.take_rate(key, 2.0, 4)


def test_a_challenge_is_consumed_once_across_replicas(replicas: tuple[KeyBroker, KeyBroker, Clock]) -> None:
    """The same evidence for one challenge, sent to both replicas at the same moment: exactly one
    attestation succeeds, the other is refused as a used challenge (one row, one winner)."""
    import threading

    from weightvault.attestation.interfaces import report_data
    from weightvault.attestation.unsafe import sample_evidence
    from weightvault.broker.service import Principal, Role
    from weightvault.crypto.keywrap import hpke_generate
    from weightvault.errors import ChallengeUsedError

    a, b, _ = replicas
    operator = Principal("operator", None, Role.OPERATOR)
    a.create_tenant(operator, "acme")
    workload = b.authenticate(a.create_principal(operator, "acme-wl", "acme", "workload"))
    wins: list[str] = []
    refusals: list[BaseException] = []
    for _ in range(10):
        challenge = a.issue_challenge(workload)
        _, public = hpke_generate(HPKEKem.X25519)
        evidence = sample_evidence(report_data(challenge.id, challenge.nonce, "acme", "x25519", public))
        start = threading.Barrier(2)

        def attest(
            broker: KeyBroker, name: str, cid: str, pub: bytes, doc: dict[str, object], go: threading.Barrier
        ) -> None:
            go.wait()
            try:
                broker.attest(workload, cid, "x25519", pub, dict(doc))
                wins.append(name)
            except ChallengeUsedError as exc:
                refusals.append(exc)

        threads = [
            threading.Thread(target=attest, args=(r, n, challenge.id, public, evidence, start))
            for r, n in ((a, "a"), (b, "b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(wins) == 10
    assert len(refusals) == 10
