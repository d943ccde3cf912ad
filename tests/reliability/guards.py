"""Guards for tests that must not reach the network: name lookups answered without DNS."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def no_dns() -> Iterator[list[str]]:
    """socket.getaddrinfo answers IP literals and localhost itself and refuses every other name.

    No query leaves the machine, whatever host names schemathesis puts in image or webhook URLs; the
    server then refuses those URLs as unresolvable. Yields the names it refused.
    """
    real_getaddrinfo = socket.getaddrinfo
    refused: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name == "localhost":
            return real_getaddrinfo("127.0.0.1" if name else None, port, *args, **kwargs)
        try:
            ipaddress.ip_address(str(name).split("%")[0])
        except ValueError:
            refused.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, "name lookups are disabled in this test") from None
        return real_getaddrinfo(name, port, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield refused
