"""kinema: self-hostable video generation. `kinema.Client` and `kinema.AsyncClient` talk to a server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kinema.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    """Import the client on first use, so `import kinema` (and the CLI) stays cheap."""
    if name in __all__:
        from kinema import client

        return getattr(client, name)
    raise AttributeError(f"module 'kinema' has no attribute {name!r}")
