"""the cluster: rate-limit counters shared by API processes; procrastinate's job tables on PostgreSQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PROCRASTINATE_SCHEMA = Path(__file__).parents[1] / "sql" / "procrastinate-3.10.0.sql"


def psycopg_connection(bind: sa.Connection) -> Any:
    """The driver's connection under this migration's transaction (scripts with literal % signs go to it)."""
    connection = bind.connection.driver_connection
    assert connection is not None
    return connection


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window"),
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # procrastinate's schema as its release ships it: a multi-statement script with literal % signs, so it
    # goes to psycopg as is (no parameters), inside this migration's transaction.
    psycopg_connection(bind).execute(PROCRASTINATE_SCHEMA.read_text())
    # Tasks queued before the queue moved to procrastinate get their job, so nothing queued is stranded.
    bind.exec_driver_sql(
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, args)
        SELECT app, 'kinema.run_task', attempts, id, id, jsonb_build_object('task_id', id)
          FROM tasks WHERE status = 'queued' ORDER BY created_at, id
        """
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        psycopg_connection(bind).execute(
            """
            DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
                procrastinate_workers CASCADE;
            DO $$
            DECLARE fn record;
            BEGIN
                FOR fn IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                          JOIN pg_namespace n ON n.oid = p.pronamespace
                          WHERE p.proname LIKE 'procrastinate\\_%' AND n.nspname = current_schema()
                LOOP
                    EXECUTE 'DROP FUNCTION IF EXISTS ' || fn.signature || ' CASCADE';
                END LOOP;
            END $$;
            DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
                procrastinate_job_status CASCADE;
            """
        )
    op.drop_table("rate_limits")
