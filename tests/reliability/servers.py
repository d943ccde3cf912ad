"""Helpers for the reliability tests: an API-only server, a loopback-only connection guard, fake DNS."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinema.engines.cache import WarmModels
from kinema.settings import Settings
from tests.conftest import LiveServer, server_settings

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def data_dir(tmp: Path, tiny_model_dir: Path) -> Path:
    """A data directory with the session's tiny model linked in."""
    root = tmp / "data"
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "kinema-tiny").exists():
        (root / "models" / "kinema-tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    return root


@contextlib.contextmanager
def running_server(
    tmp: Path, tiny_model_dir: Path, warm: WarmModels, **overrides: Any
) -> Iterator[LiveServer]:
    """A live server on its own data dir; workers=0 makes it API-only (tasks stay queued)."""
    settings = Settings(data_dir=data_dir(tmp, tiny_model_dir), device="cpu", _env_file=None)  # type: ignore[call-arg]
    server = LiveServer(server_settings(settings, **overrides), warm).start()
    try:
        yield server
    finally:
        server.stop()


def new_user(admin: httpx.Client, name: str, credit: str | None = None) -> str:
    """Create an account (with credit) and return its API key."""
    created = admin.post("/v1/admin/users", json={"name": name})
    assert created.status_code == 201, created.text
    if credit is not None:
        assert admin.post(f"/v1/admin/users/{name}/credit", json={"amount": credit}).status_code == 200
    return str(created.json()["key"])


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Every address this process connects to while active; connecting anywhere but loopback fails."""
    seen: list[str] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]).split("%")[0]
            seen.append(host)
            if not any(ipaddress.ip_address(host) in net for net in LOOPBACK):
                raise AssertionError(f"a test tried to connect to {host}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        yield seen


@contextlib.contextmanager
def fake_dns(answers: dict[str, list[str]]) -> Iterator[list[str]]:
    """Names in answers resolve to their listed addresses, one per lookup (the last one repeats).

    Yields the list of faked names looked up, in order.
    """
    real_getaddrinfo = socket.getaddrinfo
    lookups: dict[str, int] = {}
    seen: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if host in answers:
            n = lookups.get(host, 0)
            lookups[host] = n + 1
            seen.append(host)
            address = answers[host][min(n, len(answers[host]) - 1)]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield seen


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the JSON error shape; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    return dict(error)


def fields_of(error: dict[str, Any]) -> set[str]:
    """The fields an error's details name."""
    details = error.get("details") or []
    return {str(item.get("field")) for item in details if isinstance(item, dict)}
