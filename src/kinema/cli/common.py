"""What every `kinema` command shares: the consoles, one-line failures, and the remote client options."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from kinema.errors import KinemaError
from kinema.settings import Settings

if TYPE_CHECKING:
    from kinema.client import Client

out = Console()
err = Console(stderr=True)
# Piped output is for grep and cut: Rich would otherwise wrap every line at 80 columns (its width without a
# terminal), cutting ids and messages in two.
out.soft_wrap = not out.is_terminal
err.soft_wrap = not err.is_terminal

USAGE = 2  # the exit status of anything refused before work starts (bad input, unknown or unavailable app)
FAILED = 1  # the work was tried and failed, or the server could not be reached


def fail(message: str, code: int = FAILED) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {one_line(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line(message: str) -> str:
    """A message with its line breaks folded, so an error is always exactly one line."""
    return " ".join(message.split()) if "\n" in message else message


def exit_code_for(exc: KinemaError) -> int:
    """2 for a request refused before any work (any 4xx, or an app this setup cannot run), else 1."""
    return USAGE if 400 <= exc.status < 500 or exc.code == "app_unavailable" else FAILED


def cell_text(cell: RenderableType | None) -> str:
    """A table cell as the plain text a terminal would show (markup applied), on one line."""
    if cell is None:
        return ""
    text = (
        cell.plain
        if isinstance(cell, Text)
        else Text.from_markup(cell).plain
        if isinstance(cell, str)
        else ""
    )
    return " ".join(text.split())


def print_table(table: Table, console: Console | None = None) -> None:
    """A Rich table on a terminal; piped, tab-separated lines (header first) that grep and cut read whole."""
    console = console or out
    if console.is_terminal:
        console.print(table)
        return
    lines: list[str] = []
    if table.title:
        lines.append(f"{cell_text(table.title)}:")
    if table.show_header:
        lines.append("\t".join(cell_text(column.header) for column in table.columns))
    for row in zip(*(column.cells for column in table.columns), strict=True):
        lines.append("\t".join(cell_text(cell) for cell in row))
    for line in lines:  # written as is: Rich would expand the tabs into spaces
        print(line, file=console.file)


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


def remote_client(remote: str | None, api_key: str | None, settings: Settings | None = None) -> Client:
    """A client for --remote/--api-key, else KINEMA_API_URL/KINEMA_API_KEY; exit 2 when either is missing."""
    from kinema.client import Client

    settings = settings or Settings()
    url = remote or settings.api_url
    if not url:
        raise fail("no kinema server given: pass --remote URL or set KINEMA_API_URL", USAGE)
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise fail(f"no API key for {url}: pass --api-key KEY or set KINEMA_API_KEY", USAGE)
    try:
        return Client(url, key)
    except KinemaError as exc:
        raise fail(exc.message, USAGE) from None


@contextmanager
def remote_errors() -> Iterator[None]:
    """Turn the client's errors into one line on stderr: exit 2 for a refused request, 1 otherwise."""
    try:
        yield
    except KinemaError as exc:
        raise fail(exc.message, exit_code_for(exc)) from None


def local_time(moment: datetime | None, *, seconds: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "")) if moment else ""
