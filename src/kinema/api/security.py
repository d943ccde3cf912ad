"""Secrets of a running server: the signing secret, API key hashing, the bootstrap admin key, signed URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from kinema.errors import Forbidden, RateLimited
from kinema.settings import Settings
from kinema.store import Store
from kinema.store.accounts import AccountRepo, ApiKeyInfo
from kinema.store.limits import RateLimitRepo

ADMIN_OWNER = "usr_admin"
KEY_PREFIX = "kin_"


def load_secret(settings: Settings) -> bytes:
    """The server secret: from settings, else read from (or created in) the data dir with mode 0600."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return Path(path).read_text().strip().encode()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Signer:
    """HMAC-SHA256 under the server secret: hashes API keys and signs file URLs."""

    secret: bytes

    def hash_key(self, key: str) -> str:
        """A keyed hash of an API key (keys are random, so no slow KDF is needed; the secret adds pepper)."""
        return hmac.new(self.secret, b"api-key:" + key.encode(), hashlib.sha256).hexdigest()

    def webhook_secret(self, owner: str) -> str:
        """The account's Standard Webhooks signing secret (whsec_...), derived: nothing secret is stored."""
        raw = hmac.new(self.secret, b"webhook-secret:" + owner.encode(), hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(raw).decode()

    def _file_signature(self, file_id: str, expires: int) -> str:
        message = f"file:{file_id}:{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def file_url(self, base_url: str, file_id: str, ttl_s: int) -> str:
        """A download URL for a stored file that works without a key until it expires."""
        expires = int(time.time()) + ttl_s
        query = urlencode({"expires": expires, "signature": self._file_signature(file_id, expires)})
        return f"{base_url.rstrip('/')}/files/{file_id}?{query}"

    def check_file_signature(self, file_id: str, expires: int, signature: str) -> None:
        """Raise Forbidden unless the signature is ours and has not expired (constant-time compare)."""
        # Bytes, not str: compare_digest refuses non-ASCII str, and a query string can hold anything.
        given = signature.encode("utf-8", "replace")
        if not hmac.compare_digest(self._file_signature(file_id, expires).encode(), given):
            raise Forbidden("invalid signature for this file URL")
        if expires < time.time():
            raise Forbidden("this file URL has expired; fetch the task or file again for a fresh one")


def key_prefix(key: str) -> str:
    """The first characters of a key, kept in clear so a user can tell their keys apart."""
    return key[:12]


def issue_key(accounts: AccountRepo, signer: Signer, owner: str, name: str) -> tuple[str, ApiKeyInfo]:
    """A new key for owner: the secret (to show once) and what is stored about it (its hash, its prefix)."""
    secret = new_api_key()
    info = accounts.add_key(
        owner=owner, name=name, key_hash=signer.hash_key(secret), prefix=key_prefix(secret)
    )
    return secret, info


def ensure_admin_key(
    accounts: AccountRepo, signer: Signer, settings: Settings, announce: Callable[[str], None]
) -> None:
    """Make the admin account and its bootstrap key valid: the configured key, or a new one printed once."""
    accounts.ensure_user(ADMIN_OWNER, "admin", is_admin=True)
    if settings.admin_key is not None:
        secret = settings.admin_key.get_secret_value()
        key_hash = signer.hash_key(secret)
        if accounts.find_key(key_hash) is None:
            accounts.add_key(
                owner=ADMIN_OWNER,
                name="admin (KINEMA_ADMIN_KEY)",
                key_hash=key_hash,
                is_admin=True,
                prefix=key_prefix(secret),
            )
        return
    if accounts.has_admin_key():
        return
    key = new_api_key()
    accounts.add_key(
        owner=ADMIN_OWNER,
        name="admin (generated)",
        key_hash=signer.hash_key(key),
        is_admin=True,
        prefix=key_prefix(key),
    )
    announce(key)


class Limiter(Protocol):
    """Counts a key's requests against the configured rate."""

    blocking: bool  # hit() does I/O (run it off the event loop)

    def hit(self, key_id: str) -> None:
        """Count a request; RateLimited (429) with Retry-After when the key is over its rate."""
        ...


def request_limiter(settings: Settings, store: Store) -> Limiter | None:
    """The rate limiter settings ask for: counted in PostgreSQL, so it holds across API processes; in this
    process's memory on SQLite (one server process)."""
    if not settings.rate_limit:
        return None
    if store.db.postgresql:
        return SharedRequestLimiter(settings.rate_limit, store.limits)
    return RequestLimiter(settings.rate_limit)


def rate_limited(spec: str, retry_after: int) -> RateLimited:
    return RateLimited(
        f"too many requests for this API key (limit {spec}); retry in {retry_after} s",
        retry_after=retry_after,
        details={"limit": spec, "retry_after": retry_after},
    )


class SharedRequestLimiter:
    """Requests per API key in a sliding window counted in the database (store.limits), shared by every
    API process on it. `limits` has no SQL storage, so the counter is kinema's own (store/limits.py)."""

    blocking = True

    def __init__(self, spec: str, counters: RateLimitRepo) -> None:
        from limits import parse

        self.spec, self.counters = spec, counters
        item = parse(spec)
        self.amount, self.period_s = item.amount, float(item.get_expiry())

    def hit(self, key_id: str) -> None:
        decision = self.counters.hit(
            f"key:{key_id}", limit=self.amount, period_s=self.period_s, now=time.time()
        )
        if not decision.allowed:
            raise rate_limited(self.spec, max(1, math.ceil(decision.retry_after)))


class RequestLimiter:
    """Requests per API key in a moving window (the `limits` library, in this process's memory)."""

    blocking = False

    def __init__(self, spec: str) -> None:
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.spec = spec
        self.item = parse(spec)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key_id: str) -> None:
        """Count a request; RateLimited (429) with Retry-After when the key is over its rate."""
        if self.limiter.hit(self.item, key_id):
            return
        stats = self.limiter.get_window_stats(self.item, key_id)
        raise rate_limited(self.spec, max(1, math.ceil(stats.reset_time - time.time())))
