"""The store: kinema's database (SQLAlchemy; SQLite by default, PostgreSQL via KINEMA_DATABASE_URL).

One `Store` is what callers hold. It reads and writes by topic, every topic through the same `Database`
(one engine, a session and transaction per call):

- `store.tasks`: tasks and their event log (tasks.py), settling money and queueing webhooks as tasks end
- `store.files`: uploaded inputs and produced outputs (files.py)
- `store.accounts`: users, API keys, credit, balance and usage (accounts.py, over ledger.py)
- `store.webhooks`: deliveries and their attempts (webhooks.py)
- `store.limits`: request counters for rate limits that hold across API processes (limits.py)

The tables are in schema.py, their Alembic migrations in migrations/. The store imports only the domain,
errors, billing and settings of kinema: the layers above (tasks, api, cli) call it, never the reverse.
"""

from __future__ import annotations

from sqlalchemy import Engine

from kinema.store.accounts import AccountRepo
from kinema.store.db import Database
from kinema.store.files import FileRepo
from kinema.store.limits import RateLimitRepo
from kinema.store.tasks import TaskRepo
from kinema.store.webhooks import WebhookRepo


class Store:
    """Everything kinema keeps in its database, by topic, over one engine. Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self.tasks = TaskRepo(self.db)
        self.files = FileRepo(self.db)
        self.accounts = AccountRepo(self.db)
        self.webhooks = WebhookRepo(self.db)
        self.limits = RateLimitRepo(self.db)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        self.db.ping()
