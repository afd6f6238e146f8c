"""A whole broker in this process: SQLite and the audit log in a temporary directory, the HTTP app
behind an in-process transport. No server process, no socket: unit tests of each service
go through the same facade and, where the protocol matters, the same client and routes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import pytest
from starlette.testclient import TestClient

from tests.databases import fresh_url
from weightvault.attestation.registry import VerifierRegistry
from weightvault.attestation.unsafe import UnsafeSampleVerifier
from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner
from weightvault.broker.config import BrokerConfig
from weightvault.broker.keystore import RootKey
from weightvault.broker.service import KeyBroker, Principal, Role, open_broker
from weightvault.broker.tokens import TokenSigner
from weightvault.client.broker import BrokerClient
from weightvault.crypto.keywrap import HPKEKem
from weightvault.crypto.signing import Ed25519Signer
from weightvault.format.recipients import HPKEIdentity
from weightvault.server.broker_app import ServerLimits, create_broker_app

OPERATOR = Principal("operator", None, Role.OPERATOR)
ADMIN = Principal("acme-admin", "acme", Role.TENANT_ADMIN)
PUBLISHER = Principal("acme-publisher", "acme", Role.PUBLISHER)
OPEN_POLICY = {
    "verifiers": ["insecure-sample"],
    "resources": ["acme/models/*"],
    "rule": {"claim": "tenant", "equals": "acme"},
}


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class InProcess:
    broker: KeyBroker
    audit: AuditLog
    clock: Clock
    app_client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, who: str) -> BrokerClient:
        """A real BrokerClient whose requests go to the app in this process (no socket, no server)."""
        http = TestClient(self.app_client.app, base_url="http://broker")
        http.headers["authorization"] = f"Bearer {self.tokens[who]}"
        return BrokerClient("http://broker", self.tokens[who], http=cast(httpx.Client, http))

    def events(self, start: int = 0) -> list[tuple[int, object]]:
        return list(self.audit.events(start=start))

    def last(self, start: int, type: str) -> AuditEvent:
        """The newest event of ``type`` since ``start``, once every event queued so far is durable."""
        self.audit.append(AuditEvent(type="test.event", tenant="-", actor="test"))  # commits what was queued before
        found = [e for _, e in self.audit.events(start=start) if e.type == type]
        assert found, f"no {type} after {start}"
        return found[-1]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.contextmanager
def start_in_process(
    tmp_path: Path, clock: Clock, audit: AuditLog | None = None, config: BrokerConfig | None = None
) -> Iterator[InProcess]:
    """A broker with tenant acme (and globex), an admin, a publisher, a workload, and an open policy.

    ``audit``: the log it writes to (by default a log of its own, without witnesses); closed here.
    ``config``: its configuration (by default the defaults, with this ``base`` and ``broker_id``).
    """
    if audit is None:
        audit = AuditLog(tmp_path / "audit.db", NoteSigner("broker.test/audit", Ed25519Signer.generate()), clock=clock)
    registry = VerifierRegistry({"insecure-sample": UnsafeSampleVerifier()})
    broker = open_broker(
        fresh_url(tmp_path),
        RootKey.generate(),
        TokenSigner("broker.test", Ed25519Signer.generate()),
        registry,
        audit,
        registration_key=HPKEIdentity.generate(HPKEKem.X25519),
        config=config or BrokerConfig(base=tmp_path, broker_id="broker.test"),
        clock=clock,
        reader=audit,
    )
    app = create_broker_app(broker, ServerLimits(rate_per_second=1e6, burst=1_000_000))
    with TestClient(app, base_url="http://broker") as app_client:
        env = InProcess(broker, audit, clock, app_client)
        env.tokens["operator"] = broker.bootstrap_operator()
        for tenant in ("acme", "globex"):
            broker.create_tenant(OPERATOR, tenant)
            for role in ("tenant-admin", "publisher", "workload", "auditor"):
                name = f"{tenant}-{role.split('-')[-1]}"
                env.tokens[name] = broker.create_principal(OPERATOR, name, tenant, role)
        broker.put_policy(ADMIN, "acme", "open", OPEN_POLICY)
        yield env
    broker.close()
    audit.close()


@pytest.fixture
def in_process(tmp_path: Path, clock: Clock) -> Iterator[InProcess]:
    """A broker with tenant acme (and globex), an admin, a publisher, a workload, and an open policy."""
    with start_in_process(tmp_path, clock) as env:
        yield env


@pytest.fixture
def make_principal() -> Callable[[str, str | None, Role], Principal]:
    return Principal
