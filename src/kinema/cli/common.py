"""What every `kinema` command shares: the consoles, one-line failures, and the remote client options."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from kinema.errors import KinemaError
from kinema.settings import Settings

if TYPE_CHECKING:
    from kinema.client import Client

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


RemoteOption = Annotated[
    str | None,
    typer.Option(
        "--remote",
        metavar="URL",
        help="The kinema server to use (default: KINEMA_API_URL).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="API key for the server (default: KINEMA_API_KEY, which keeps it out of `ps`).",
        show_default=False,
    ),
]
USAGE_STATUSES = frozenset({400, 404, 413, 415, 422})


def remote_client(remote: str | None, api_key: str | None, settings: Settings | None = None) -> Client:
    """A client for --remote/--api-key, else KINEMA_API_URL/KINEMA_API_KEY; exit 2 when either is missing."""
    from kinema.client import Client

    settings = settings or Settings()
    url = remote or settings.api_url
    if not url:
        raise fail("no kinema server given: pass --remote URL or set KINEMA_API_URL", 2)
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise fail(f"no API key for {url}: pass --api-key KEY or set KINEMA_API_KEY", 2)
    try:
        return Client(url, key)
    except KinemaError as exc:
        raise fail(exc.message, 2) from None


@contextmanager
def remote_errors() -> Iterator[None]:
    """Turn the client's errors into one line on stderr: exit 2 for a wrong request, 1 otherwise."""
    try:
        yield
    except KinemaError as exc:
        raise fail(exc.message, 2 if exc.status in USAGE_STATUSES else 1) from None


def local_time(moment: datetime | None, *, seconds: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "")) if moment else ""
