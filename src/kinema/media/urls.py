"""Outbound URLs (image fetches and webhooks): parsed one way, their addresses checked, connections pinned.

Every URL kinema itself connects to goes through parse_url (one parser, so the host that is checked is the
host that is contacted), resolve_checked (every address of the host must pass the policy) and
pinned_client (the connection goes to those checked addresses, with the Host header and TLS name of the
URL kept), so a DNS answer cannot change between the check and the connect.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]

MAX_URL_CHARS = 8192
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# NAT64 gateways forward 64:ff9b::a.b.c.d to the IPv4 address a.b.c.d, private ones included.
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class URLRefused(ValueError):
    """A URL kinema will not connect to; unsafe marks a policy refusal (address, scheme, userinfo)."""

    def __init__(self, reason: str, *, unsafe: bool = False, details: Any = None) -> None:
        super().__init__(reason)
        self.reason, self.unsafe, self.details = reason, unsafe, details


class ResolveTimeout(URLRefused):
    """The host's name did not resolve within the deadline."""


def parse_url(url: str, *, schemes: tuple[str, ...] = ("https", "http")) -> httpx.URL:
    """The URL as httpx will request it; URLRefused for anything malformed, ambiguous or with userinfo.

    Backslashes, whitespace and control characters are refused rather than interpreted: parsers disagree
    on them (``http://127.0.0.1\\@1.2.3.4/`` is host 1.2.3.4 to one and 127.0.0.1 to another).
    """
    if not isinstance(url, str) or not url:
        raise URLRefused("is empty")
    if len(url) > MAX_URL_CHARS:
        raise URLRefused(f"is longer than {MAX_URL_CHARS} characters")
    if any(c == "\\" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise URLRefused("contains a backslash, whitespace or a control character", unsafe=True)
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
        raise URLRefused(f"is malformed: {_one_line(exc)}") from None
    if parsed.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise URLRefused(f"must use {allowed}, not {parsed.scheme or 'no scheme'}", unsafe=True)
    if not host:
        raise URLRefused("has no host")
    if parsed.userinfo or "@" in urlsplit(url).netloc:
        raise URLRefused("must not contain a user name or password (user@host)", unsafe=True)
    if port is not None and not 0 < port < 65536:
        raise URLRefused(f"has port {port}, outside 1-65535")
    return parsed


def url_port(url: httpx.URL) -> int:
    """The URL's port, or its scheme's default."""
    return url.port or (443 if url.scheme == "https" else 80)


def url_host(url: httpx.URL) -> str:
    """The URL's host as it is resolved and sent in the Host header (IDNA-encoded, IPv6 unbracketed)."""
    return url.raw_host.decode("ascii")


def is_public_address(address: IPAddress) -> bool:
    """Whether an address is safe to connect to: globally routable and not special-purpose."""
    if isinstance(address, ipaddress.IPv6Address):
        translated = address.ipv4_mapped
        if translated is None and address in _NAT64_PREFIX:
            translated = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if translated is not None:
            # Packets go to the IPv4 address, so judge that (older Pythons call every mapped address private).
            return is_public_address(translated)
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def allow_any_address(address: IPAddress) -> bool:
    """The policy when private addresses are allowed (tests, trusted LANs): every address is acceptable."""
    return True


def resolve(host: str, port: int, deadline: float) -> list[IPAddress]:
    """The distinct addresses of a host, in resolver order, within the deadline (monotonic time)."""
    results: list[list[IPAddress]] = []
    errors: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [ipaddress.ip_address(info[4][0]) for info in infos if info[0] in _INET_FAMILIES]
            results.append(list(dict.fromkeys(found)))
        except (OSError, ValueError, UnicodeError) as exc:
            errors.append(exc if isinstance(exc, OSError) else OSError(str(exc)))

    # getaddrinfo has no timeout of its own; a daemon thread lets a stuck resolver fail the request.
    worker = threading.Thread(target=lookup, name=f"kinema-resolve-{host}", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise ResolveTimeout(f"host {host!r} did not resolve in time")
    if errors or not results or not results[0]:
        reason = _one_line(errors[0]) if errors else "no addresses"
        raise URLRefused(f"host {host!r} cannot be resolved: {reason}")
    return results[0]


def resolve_checked(url: httpx.URL, allowed: AddressPolicy, deadline: float) -> list[IPAddress]:
    """The addresses a URL's host resolves to, refusing the host if any of them is not allowed."""
    host = url_host(url)
    addresses = resolve(host, url_port(url), deadline)
    # All, not any: a host answering with one public and one private address is still a way in.
    forbidden = [address for address in addresses if not allowed(address)]
    if forbidden:
        raise URLRefused(
            f"host {host!r} resolves to {forbidden[0]}, which is not a public address",
            unsafe=True,
            details={"host": host, "address": str(forbidden[0])},
        )
    return addresses


def pinned_client(
    url: httpx.URL,
    addresses: list[IPAddress],
    *,
    deadline: float,
    ssl_context: ssl.SSLContext,
    timeout: float,
) -> httpx.Client:
    """An httpx client whose one connection goes to the checked addresses of url's host, nowhere else."""
    transport = PinnedTransport(ssl_context, PinnedBackend(url_host(url), addresses, deadline))
    return httpx.Client(transport=transport, trust_env=False, timeout=timeout, follow_redirects=False)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects only to addresses checked up front, so DNS cannot change between check and connect."""

    def __init__(self, host: str, addresses: list[IPAddress], deadline: float) -> None:
        self._host = host
        self._addresses = addresses
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """A stream to the first checked address that accepts, bounded by the deadline."""
        if host != self._host:
            raise httpcore.ConnectError(f"refusing to connect to unchecked host {host!r}")
        last_error: Exception = httpcore.ConnectError(f"no address to connect to for {host!r}")
        for address in self._addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=within_deadline(timeout, self._deadline, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
                continue
            return DeadlineStream(stream, self._deadline)
        raise last_error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        """Never used: outbound URLs are TCP only."""
        raise httpcore.ConnectError("unix sockets are not used for outbound URLs")


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the deadline, not just per read."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, giving up at the deadline even if the server keeps trickling bytes."""
        return self._inner.read(max_bytes, within_deadline(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, giving up at the deadline."""
        self._inner.write(buffer, within_deadline(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the underlying stream."""
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        """The TLS stream (certificate checked against the URL's host), still under the deadline."""
        remaining = within_deadline(timeout, self._deadline, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, remaining), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        """Whatever the underlying stream reports."""
        return self._inner.get_extra_info(info)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, with a connection pool that uses a PinnedBackend."""

    def __init__(self, ssl_context: ssl.SSLContext, backend: PinnedBackend) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx has no public hook for a network backend; replacing the pool keeps its request mapping.
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=backend, max_connections=1
        )


def within_deadline(timeout: float | None, deadline: float, expired: type[Exception]) -> float:
    """The smaller of an operation's timeout and the time left; raises expired if none is left."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


def _one_line(value: object) -> str:
    """A value's text with whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(value).split())
