"""Rate limits kept in the database, so they hold across API processes: a sliding-window counter.

Each key counts its requests per fixed window (the `rate_limits` table, one row per key and window). A
request is allowed when the current window's count plus the previous window's, weighted by how much of it
still lies inside the sliding window, stays within the limit: the estimate Cloudflare and `limits`'
sliding-window-counter strategy use, exact for a steady rate and never more than the limit over any
window. The check and the increment are one conditional UPDATE, which PostgreSQL serializes on the row
(SQLite on its single writer), so concurrent requests through several API processes cannot overshoot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kinema.store.db import Database, is_postgresql, rowcount
from kinema.store.schema import RateLimitRow


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may go ahead; if not, the seconds until one would."""

    allowed: bool
    retry_after: float = 0.0


def sliding_estimate(current: int, previous: int, elapsed: float, period: float) -> float:
    """Requests in the sliding window ending now: this window's plus the overlapping share of the last."""
    return current + previous * max(0.0, 1.0 - elapsed / period)


def retry_after(current: int, previous: int, elapsed: float, period: float, limit: int) -> float:
    """Seconds until one more request fits, if no other request arrives meanwhile."""
    if current + 1 <= limit:
        # the previous window's share must shrink to what is left: previous * (1 - x) <= limit - 1 - current
        if previous <= 0:
            return 0.0
        fraction = 1.0 - (limit - 1 - current) / previous
        return max(0.0, fraction * period - elapsed)
    # this window is full: wait for the next one, where this window's count is the weighted previous
    fraction = 1.0 - (limit - 1) / current if current > 0 else 0.0
    return (period - elapsed) + max(0.0, fraction) * period


class RateLimitRepo:
    """Counts requests per key in the database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def hit(self, key: str, *, limit: int, period_s: float, now: float) -> RateDecision:
        """Count one request for key if it fits `limit` per `period_s` seconds (now: Unix time)."""
        window = math.floor(now / period_s)
        elapsed = now - window * period_s
        weight = max(0.0, 1.0 - elapsed / period_s)
        with self.db.session() as session:
            insert = pg_insert if is_postgresql(session) else sqlite_insert
            session.execute(
                insert(RateLimitRow)
                .values(key=key, window=window, hits=0)
                .on_conflict_do_nothing(index_elements=["key", "window"])
            )
            previous = (
                session.scalar(
                    select(RateLimitRow.hits).where(
                        RateLimitRow.key == key, RateLimitRow.window == window - 1
                    )
                )
                or 0
            )
            # The row lock taken by this UPDATE orders concurrent hits; each sees the others' counts.
            allowed = rowcount(
                session,
                update(RateLimitRow)
                .where(
                    RateLimitRow.key == key,
                    RateLimitRow.window == window,
                    RateLimitRow.hits + 1 + previous * weight <= limit,
                )
                .values(hits=RateLimitRow.hits + 1),
            )
            if allowed:
                session.execute(
                    delete(RateLimitRow).where(RateLimitRow.key == key, RateLimitRow.window < window - 1)
                )
                return RateDecision(True)
            current = session.scalar(
                select(RateLimitRow.hits).where(RateLimitRow.key == key, RateLimitRow.window == window)
            )
        return RateDecision(False, retry_after(current or 0, previous, elapsed, period_s, limit))
