"""Money inside a store transaction: holds at submit, one charge and one release per task, balances.

Amounts are integer micro-units. credit (+) and charge (-) move the balance; hold (-) and release (+) only
reserve part of it. The unique (task_id, kind) constraint makes every task-level entry happen at most once,
whatever races between completion, cancellation and recovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kinema.billing.pricing import format_micros
from kinema.errors import InsufficientBalance, NotFound
from kinema.store.db import rowcount
from kinema.store.schema import LedgerEntryRow, TaskRow, UserRow


@dataclass(frozen=True)
class Balance:
    balance_micros: int
    held_micros: int

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


def _entry(
    session: Session,
    *,
    account: str,
    kind: str,
    amount: int,
    currency: str,
    now: datetime,
    task_id: str | None = None,
    app: str | None = None,
    note: str | None = None,
) -> None:
    session.add(
        LedgerEntryRow(
            account_id=account,
            kind=kind,
            amount_micros=amount,
            currency=currency,
            task_id=task_id,
            app=app,
            note=note,
            created_at=now,
        )
    )


def lock_account(session: Session, account: str, now: datetime) -> None:
    """Serialize money movements of one account (row lock on PostgreSQL, the write lock on SQLite)."""
    if not rowcount(session, update(UserRow).where(UserRow.id == account).values(updated_at=now)):
        raise NotFound(f"no account {account!r}")


def balance(session: Session, account: str) -> Balance:
    sums = dict(
        session.execute(
            select(LedgerEntryRow.kind, func.coalesce(func.sum(LedgerEntryRow.amount_micros), 0))
            .where(LedgerEntryRow.account_id == account)
            .group_by(LedgerEntryRow.kind)
        ).all()
    )
    return Balance(
        balance_micros=int(sums.get("credit", 0)) + int(sums.get("charge", 0)),
        held_micros=-(int(sums.get("hold", 0)) + int(sums.get("release", 0))),
    )


def place_hold(
    session: Session, *, account: str, task_id: str, app: str, amount: int, currency: str, now: datetime
) -> None:
    """Reserve the most a task can cost, or raise InsufficientBalance (402) with the amounts."""
    lock_account(session, account, now)
    current = balance(session, account)
    if current.available_micros < amount:
        raise InsufficientBalance(
            f"this run can cost up to {format_micros(amount)} {currency}; the account has "
            f"{format_micros(current.available_micros)} {currency} available",
            details={
                "needed": format_micros(amount),
                "available": format_micros(current.available_micros),
                "currency": currency,
            },
        )
    _entry(
        session,
        account=account,
        kind="hold",
        amount=-amount,
        currency=currency,
        now=now,
        task_id=task_id,
        app=app,
    )


def settle(session: Session, row: TaskRow, *, charge: int | None, currency: str, now: datetime) -> None:
    """A task ended: release its hold, and charge it when it completed (each at most once)."""
    existing = dict(
        session.execute(
            select(LedgerEntryRow.kind, LedgerEntryRow.amount_micros).where(LedgerEntryRow.task_id == row.id)
        ).all()
    )
    if "hold" in existing and "release" not in existing:
        release = -existing["hold"]
        _entry(
            session,
            account=row.owner_id,
            kind="release",
            amount=release,
            currency=currency,
            now=now,
            task_id=row.id,
            app=row.app,
        )
    if charge is not None and "charge" not in existing:
        _entry(
            session,
            account=row.owner_id,
            kind="charge",
            amount=-charge,
            currency=currency,
            now=now,
            task_id=row.id,
            app=row.app,
        )


def credit(
    session: Session, *, account: str, amount: int, currency: str, note: str | None, now: datetime
) -> None:
    lock_account(session, account, now)
    _entry(session, account=account, kind="credit", amount=amount, currency=currency, now=now, note=note)
