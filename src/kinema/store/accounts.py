"""Accounts: users, their API keys, credit and the balance and usage the ledger gives.

Money movements themselves (holds, charges, releases) happen in ledger, inside the transaction of the task
change that causes them; this module is the account's side: who, which keys, how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from kinema.domain.tasks import new_id, utcnow
from kinema.errors import Conflict, NotFound
from kinema.store import ledger
from kinema.store.db import Database, aware, owned
from kinema.store.schema import ApiKeyRow, LedgerEntryRow, UserRow


@dataclass(frozen=True)
class ApiKey:
    """An authenticated key: whose it is and whether it may use the admin routes."""

    id: str
    owner_id: str
    name: str
    is_admin: bool


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    prefix: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    app: str
    day: str
    tasks: int
    cost_micros: int


@dataclass(frozen=True)
class AccountSummary:
    user: User
    balance: ledger.Balance
    usage: list[Usage]


def _key_info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=aware(row.created_at) or utcnow(),
        last_used_at=aware(row.last_used_at),
        revoked_at=aware(row.revoked_at),
    )


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, is_admin=row.is_admin, created_at=aware(row.created_at) or utcnow())


class AccountRepo:
    """Users, API keys (stored as keyed hashes) and the ledger's view of each account."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Users ---------------------------------------------------------------------------------------

    def create_user(self, name: str, *, is_admin: bool = False, user_id: str | None = None) -> User:
        now = utcnow()
        row = UserRow(
            id=user_id or new_id("usr"), name=name, is_admin=is_admin, created_at=now, updated_at=now
        )
        try:
            with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return _user(row)

    def ensure_user(self, user_id: str, name: str, *, is_admin: bool = False) -> User:
        with self.db.session() as session:
            row = session.get(UserRow, user_id)
            if row is not None:
                return _user(row)
        return self.create_user(name, is_admin=is_admin, user_id=user_id)

    def get_user(self, ref: str) -> User:
        """A user by id or by name."""
        with self.db.session() as session:
            row = session.get(UserRow, ref) or session.scalar(select(UserRow).where(UserRow.name == ref))
            if row is None:
                raise NotFound(f"no user {ref!r}")
            return _user(row)

    def list_users(self) -> list[User]:
        with self.db.session() as session:
            return [_user(r) for r in session.scalars(select(UserRow).order_by(UserRow.created_at))]

    # API keys ------------------------------------------------------------------------------------

    def add_key(
        self, *, owner: str, name: str, key_hash: str, is_admin: bool = False, prefix: str | None = None
    ) -> ApiKeyInfo:
        row = ApiKeyRow(
            id=new_id("key"),
            owner_id=owner,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            is_admin=is_admin,
            created_at=utcnow(),
        )
        with self.db.session() as session:
            session.add(row)
        return _key_info(row)

    def find_key(self, key_hash: str) -> ApiKey | None:
        """The live key with this hash, with its account's admin role."""
        with self.db.session() as session:
            found = session.execute(
                select(ApiKeyRow, UserRow.is_admin)
                .outerjoin(UserRow, UserRow.id == ApiKeyRow.owner_id)
                .where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None))
            ).first()
            if found is None:
                return None
            row, user_admin = found
            return ApiKey(row.id, row.owner_id, row.name, bool(row.is_admin or user_admin))

    def touch_key(self, key_id: str) -> None:
        """Record that a key was just used."""
        with self.db.session() as session:
            session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=utcnow()))

    def list_keys(self, owner: str) -> list[ApiKeyInfo]:
        with self.db.session() as session:
            rows = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.owner_id == owner).order_by(ApiKeyRow.created_at)
            )
            return [_key_info(r) for r in rows]

    def revoke_key(self, owner: str, key_id: str) -> ApiKeyInfo:
        """Revoke one of owner's keys (NotFound for anyone else's)."""
        with self.db.session() as session:
            row = owned(session.get(ApiKeyRow, key_id), owner, "API key", key_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _key_info(row)

    def has_admin_key(self) -> bool:
        with self.db.session() as session:
            query = select(ApiKeyRow.id).where(ApiKeyRow.is_admin.is_(True), ApiKeyRow.revoked_at.is_(None))
            return session.scalar(query.limit(1)) is not None

    # Money ---------------------------------------------------------------------------------------

    def credit(
        self, account: str, amount_micros: int, *, currency: str = "USD", note: str | None = None
    ) -> None:
        with self.db.session() as session:
            ledger.credit(
                session, account=account, amount=amount_micros, currency=currency, note=note, now=utcnow()
            )

    def summary(self, account: str, *, days: int = 30) -> AccountSummary:
        """Balance, holds and usage by app and day, all derived from the ledger."""
        since = utcnow() - timedelta(days=days)
        with self.db.session() as session:
            row = session.get(UserRow, account)
            if row is None:
                raise NotFound(f"no account {account!r}")
            current = ledger.balance(session, account)
            charges = session.execute(
                select(LedgerEntryRow.app, LedgerEntryRow.amount_micros, LedgerEntryRow.created_at).where(
                    LedgerEntryRow.account_id == account,
                    LedgerEntryRow.kind == "charge",
                    LedgerEntryRow.created_at >= since,
                )
            ).all()
        usage: dict[tuple[str, str], list[int]] = {}
        for app, amount, created in charges:
            day = (aware(created) or since).date().isoformat()
            bucket = usage.setdefault((app or "", day), [0, 0])
            bucket[0] += 1
            bucket[1] += -amount
        rows = [Usage(app=a, day=d, tasks=n, cost_micros=c) for (a, d), (n, c) in sorted(usage.items())]
        return AccountSummary(user=_user(row), balance=current, usage=rows)

    def ledger_entries(self, account: str) -> list[dict[str, Any]]:
        """The account's ledger, oldest first (for audits and tests)."""
        with self.db.session() as session:
            rows = session.scalars(
                select(LedgerEntryRow).where(LedgerEntryRow.account_id == account).order_by(LedgerEntryRow.id)
            )
            return [
                {"kind": r.kind, "amount_micros": r.amount_micros, "task_id": r.task_id, "app": r.app}
                for r in rows
            ]
