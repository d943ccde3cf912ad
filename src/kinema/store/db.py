"""The database under the store: one SQLAlchemy engine per URL, migrated with Alembic, and the one
session/transaction helper every part of the store writes through."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Update, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from kinema.errors import NotFound
from kinema.store.schema import ApiKeyRow, FileRow, TaskRow

MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL NOTIFY channel carrying the ids of tasks whose events changed (waiters listen on it).
TASK_EVENTS_CHANNEL = "kinema_task_events"
# An arbitrary advisory-lock key: processes starting together on one database migrate one at a time.
MIGRATION_LOCK = 0x6B696E656D61
_CHANGED = "kinema.changed_tasks"
_NOTIFY_PAYLOAD = 7000  # bytes; PostgreSQL refuses NOTIFY payloads from 8000


def open_engine(url: str) -> Engine:
    """An engine for url; SQLite gets WAL, a busy timeout and foreign keys so threads can share it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied (idempotent; run on every start)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # two processes starting at once: one migrates
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def rowcount(session: Session, statement: Update) -> int:
    """Rows a conditional UPDATE changed: 0 means another actor got there first."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount


def mark_changed(session: Session, task_id: str) -> None:
    """Record that a task's events changed in this transaction: waiters hear of it once it commits."""
    session.info.setdefault(_CHANGED, set()).add(task_id)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class Database:
    """One engine and its sessions. Thread-safe: every call opens its own session and transaction.

    Tasks whose events a transaction changed are announced when it commits: to this process's listeners
    (on_commit), and on PostgreSQL with NOTIFY on TASK_EVENTS_CHANNEL, sent by the commit itself, so other
    processes' listeners hear of exactly what was committed.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._listeners: list[Callable[[set[str]], None]] = []
        self._listeners_lock = threading.Lock()

    def on_commit(self, listener: Callable[[set[str]], None]) -> None:
        """Call listener(task_ids) after each commit that changed those tasks' events (in the committing
        thread: it must be quick and must not raise)."""
        with self._listeners_lock:
            self._listeners = [*self._listeners, listener]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session
            changed: set[str] = session.info.get(_CHANGED, set())
            if changed and self.postgresql:
                for payload in _payloads(sorted(changed)):
                    session.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": TASK_EVENTS_CHANNEL, "payload": payload},
                    )
        changed = session.info.pop(_CHANGED, set())
        if changed:
            for listener in self._listeners:
                listener(changed)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def _payloads(task_ids: list[str]) -> Iterator[str]:
    """Space-separated task ids in NOTIFY payloads under PostgreSQL's size limit."""
    batch: list[str] = []
    size = 0
    for task_id in task_ids:
        if batch and size + len(task_id) + 1 > _NOTIFY_PAYLOAD:
            yield " ".join(batch)
            batch, size = [], 0
        batch.append(task_id)
        size += len(task_id) + 1
    if batch:
        yield " ".join(batch)


Owned = TypeVar("Owned", TaskRow, FileRow, ApiKeyRow)


def owned(row: Owned | None, owner: str | None, what: str, ref: str) -> Owned:
    """The row when it exists and belongs to owner (any owner when None); NotFound otherwise, never 403."""
    if row is None or (owner is not None and row.owner_id != owner):
        raise NotFound(f"no {what} {ref!r}")
    return row
