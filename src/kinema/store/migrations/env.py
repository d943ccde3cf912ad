"""Alembic environment: kinema runs migrations in-process on a connection it passes in."""

from __future__ import annotations

from alembic import context

from kinema.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - kinema always passes its own connection
    raise RuntimeError("run kinema's migrations through kinema.store.db.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
