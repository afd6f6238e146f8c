"""Rate limits shared by broker replicas: one token bucket per key, in the database.

A single broker keeps its buckets in memory (:class:`weightvault.server.http.RateLimiter`).
Replicas over one PostgreSQL database must share them, or N replicas would allow N
times the configured rate. :meth:`RateLimitRepository.take` refills and takes from a
bucket in one statement (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``), which
PostgreSQL runs atomically per row, measured by the database's clock (one clock for
every replica). It commits without waiting for the disk or the standby: losing the
last moments of a bucket's state in a crash only refills it, as a restart does.
"""

from __future__ import annotations

import random
from typing import Final

import sqlalchemy as sa

from weightvault.broker.storage.base import Repository

__all__ = ["RateLimitRepository"]

_NOW_MS: Final = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
#: The bucket refilled to now, capped at the burst (the row's old state is ``rate_buckets.*``).
_REFILLED: Final = (
    f"LEAST(CAST(:burst AS DOUBLE PRECISION), rate_buckets.tokens"
    f" + GREATEST(0, {_NOW_MS} - rate_buckets.updated_ms) * CAST(:rate AS DOUBLE PRECISION) / 1000.0)"
)
_TAKE: Final = sa.text(
    f"""
    INSERT INTO rate_buckets (key, tokens, updated_ms, allowed)
    VALUES (:key, CAST(:burst AS DOUBLE PRECISION) - 1, {_NOW_MS}, TRUE)
    ON CONFLICT (key) DO UPDATE SET
        tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
        allowed = {_REFILLED} >= 1,
        updated_ms = {_NOW_MS}
    RETURNING allowed
    """  # noqa: S608 - constant fragments, bound values
)
#: One take in this many also deletes buckets idle long enough to be full again (they carry no state).
_SWEEP_EVERY: Final = 1000


class RateLimitRepository(Repository):
    """Token buckets in the database (PostgreSQL)."""

    def take(self, key: str, rate: float, burst: int) -> bool:
        """Take one token from ``key``'s bucket (``rate`` per second, at most ``burst``); False when
        it is empty. A refused request takes nothing, as with the in-memory limiter."""
        with self._db.write(durable=False) as conn:
            allowed = bool(conn.execute(_TAKE, {"key": key, "rate": rate, "burst": burst}).scalar_one())
            if random.randrange(_SWEEP_EVERY) == 0:  # noqa: S311 - spreads housekeeping, not a secret
                idle_ms = int(1000 * burst / rate) + 1000
                conn.execute(
                    sa.text(f"DELETE FROM rate_buckets WHERE updated_ms < {_NOW_MS} - :idle"),  # noqa: S608
                    {"idle": idle_ms},
                )
        return allowed
