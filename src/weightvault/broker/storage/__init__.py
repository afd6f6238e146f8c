"""Broker storage: the one package that imports SQLAlchemy (an import contract keeps it so).

:class:`BrokerStore` is the seam a storage backend implements: a database (SQLite by
default; any SQLAlchemy URL) and one repository per aggregate, each method one
transaction returning typed rows. The domain never sees a connection or a table.
"""

from __future__ import annotations

from weightvault.broker.storage.console import ConsoleSessionRepository, ConsoleSessionRow
from weightvault.broker.storage.containment import HoldRepository, HoldRow
from weightvault.broker.storage.controls import ApprovalRepository, CustodyRepository
from weightvault.broker.storage.database import Database
from weightvault.broker.storage.gateway import BucketRow, GatewayKeyRow, GatewayRepository, OutboxRepository, OutboxRow
from weightvault.broker.storage.limits import RateLimitRepository
from weightvault.broker.storage.repositories import (
    CatalogueRepository,
    DeviceRepository,
    KeyRepository,
    PrincipalRepository,
    SessionRepository,
    TenantRepository,
)
from weightvault.broker.storage.rows import (
    ApprovalRequestRow,
    ApprovalRow,
    CeremonyRow,
    ChallengeRow,
    DeviceRow,
    KEKRow,
    ModelRow,
    PolicyRow,
    PrincipalRow,
    ShareSetRow,
    SigningKeyRow,
)

__all__ = [
    "ApprovalRequestRow",
    "ApprovalRow",
    "BrokerStore",
    "BucketRow",
    "CeremonyRow",
    "ChallengeRow",
    "ConsoleSessionRow",
    "DeviceRow",
    "GatewayKeyRow",
    "GatewayRepository",
    "HoldRepository",
    "HoldRow",
    "KEKRow",
    "ModelRow",
    "OutboxRepository",
    "OutboxRow",
    "PolicyRow",
    "PrincipalRow",
    "ShareSetRow",
    "SigningKeyRow",
]


class BrokerStore:
    """Every repository of one broker database."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.tenants = TenantRepository(self.db)
        self.keys = KeyRepository(self.db)
        self.principals = PrincipalRepository(self.db)
        self.devices = DeviceRepository(self.db)
        self.catalogue = CatalogueRepository(self.db)
        self.sessions = SessionRepository(self.db)
        self.approvals = ApprovalRepository(self.db)
        self.custody = CustodyRepository(self.db)
        self.gateway = GatewayRepository(self.db)
        self.outbox = OutboxRepository(self.db)
        self.holds = HoldRepository(self.db)
        self.rate_limits = RateLimitRepository(self.db)
        self.console_sessions = ConsoleSessionRepository(self.db)

    def migrate(self, now: int) -> int:
        """Bring the schema up to date (see :mod:`.schema`)."""
        return self.db.migrate(now)

    def ping(self) -> str | None:
        return self.db.ping()

    def close(self) -> None:
        self.db.close()
