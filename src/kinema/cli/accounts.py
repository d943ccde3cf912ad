"""`kinema keys` (your API keys, on a server) and `kinema admin` (accounts and credit, in the local store)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kinema.cli.common import (
    USAGE,
    ApiKeyOption,
    RemoteOption,
    err,
    exit_code_for,
    fail,
    local_time,
    out,
    print_table,
    remote_client,
    remote_errors,
)
from kinema.errors import KinemaError
from kinema.settings import Settings

if TYPE_CHECKING:
    from kinema.api.security import Signer
    from kinema.store import Store

keys_cli = typer.Typer(help="Create, list and revoke your API keys on a kinema server.", no_args_is_help=True)
admin_cli = typer.Typer(
    help="Manage accounts and credit directly in this install's task store (KINEMA_DATABASE_URL).",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name to recognise the key by.")] = "default",
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Make a new key for your account; its secret is printed only now."""
    with remote_client(remote, api_key) as client, remote_errors():
        created = client.create_key(name)
    if as_json:
        out.print_json(created.model_dump_json())
        return
    err.print(f"API key {created.id} ({created.name}); shown only now, store it:", highlight=False)
    out.print(created.key, highlight=False, soft_wrap=True)


@keys_cli.command("list")
def keys_list(as_json: JsonOption = False, remote: RemoteOption = None, api_key: ApiKeyOption = None) -> None:
    """Your keys (never their secrets), with when each was last used."""
    with remote_client(remote, api_key) as client, remote_errors():
        keys = client.keys()
    if as_json:
        out.print_json(data=[key.model_dump(mode="json") for key in keys])
        return
    table = Table("id", "name", "starts with", "created", "last used", "state", box=None, pad_edge=False)
    for key in keys:
        state = f"revoked {local_time(key.revoked_at, seconds=False)}" if key.revoked_at else "active"
        table.add_row(
            key.id,
            key.name,
            f"{key.prefix}…" if key.prefix else "",
            local_time(key.created_at, seconds=False),
            local_time(key.last_used_at, seconds=False) if key.last_used_at else "never",
            state,
        )
    print_table(table)


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID")],
    as_json: JsonOption = False,
    remote: RemoteOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Revoke one of your keys; it stops working at once."""
    with remote_client(remote, api_key) as client, remote_errors():
        revoked = client.revoke_key(key_id)
    if as_json:
        out.print_json(revoked.model_dump_json())
        return
    out.print(f"revoked {revoked.id} ({revoked.name})", highlight=False)


def open_store(settings: Settings) -> tuple[Store, Signer]:
    """The task store and key signer of this install, migrated (the server need not be running)."""
    from kinema.api.security import Signer, load_secret
    from kinema.store import Store
    from kinema.store.db import migrate, open_engine

    engine = open_engine(settings.database)
    migrate(engine)
    return Store(engine), Signer(load_secret(settings))


@admin_cli.command("create-user")
def admin_create_user(
    name: Annotated[str, typer.Argument(help="Unique account name (letters, digits, _ . @ -).")],
    is_admin: Annotated[bool, typer.Option("--admin", help="Give the account admin rights.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create an account and its first API key (printed once)."""
    from kinema.api.security import issue_key

    if not name or not all(c.isalnum() or c in "_.@-" for c in name) or len(name) > 120:
        raise fail(f"invalid user name {name!r}: use letters, digits and _ . @ -", USAGE)
    store, signer = open_store(Settings())
    try:
        user = store.accounts.create_user(name, is_admin=is_admin)
    except KinemaError as exc:  # the name is taken: refused, nothing was made
        raise fail(exc.message, exit_code_for(exc)) from None
    secret, key = issue_key(store.accounts, signer, user.id, "first key")
    if as_json:
        out.print_json(
            data={"id": user.id, "name": user.name, "is_admin": is_admin, "key_id": key.id, "key": secret}
        )
        return
    err.print(f"created {user.id} ({user.name}{', admin' if is_admin else ''}); API key, shown only now:")
    out.print(secret, highlight=False, soft_wrap=True)


@admin_cli.command("credit")
def admin_credit(
    user: Annotated[str, typer.Argument(metavar="USER", help="User id or name.")],
    amount: Annotated[str, typer.Argument(help="Exact decimal, e.g. 25.00 (negative to debit).")],
    note: Annotated[str | None, typer.Option(help="Why, for the ledger.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add credit to an account's ledger and print its balance."""
    from kinema.billing.pricing import format_money, from_micros, to_micros

    try:
        micros = to_micros(Decimal(amount))
    except (InvalidOperation, ValueError):
        raise fail(
            f"invalid amount {amount!r}: give a decimal with at most six places, e.g. 25.00", USAGE
        ) from None
    store, _ = open_store(Settings())
    try:
        account = store.accounts.get_user(user)
        store.accounts.credit(account.id, micros, note=note)
    except KinemaError as exc:  # no such user (refused), or the store failed
        raise fail(exc.message, exit_code_for(exc)) from None
    summary = store.accounts.summary(account.id)
    if as_json:
        balance = summary.balance
        out.print_json(
            data={
                "id": account.id,
                "name": account.name,
                "currency": "USD",
                "balance": format_money(from_micros(balance.balance_micros)),
                "held": format_money(from_micros(balance.held_micros)),
                "available": format_money(from_micros(balance.available_micros)),
            }
        )
        return
    out.print(
        f"{account.name}: balance {format_money(from_micros(summary.balance.balance_micros))} USD, "
        f"available {format_money(from_micros(summary.balance.available_micros))} USD",
        highlight=False,
    )
