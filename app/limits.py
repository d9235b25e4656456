"""Client admission on /v1: optional API keys and per-client token-bucket rate limits."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from fastapi import Request

from app.errors import RateLimited, Unauthorized
from app.settings import Settings

# Buckets kept at most; past it the least recently seen client starts with a full bucket
# again, which only matters under more distinct clients than this within a minute or so.
MAX_CLIENTS = 100_000


class RateLimiter:
    """A token bucket per client: `rpm` requests a minute, up to `burst` at once.

    Example:
        >>> limiter = RateLimiter(rpm=60, burst=2, clock=lambda: 0.0)
        >>> [limiter.check("a"), limiter.check("a"), limiter.check("a")]
        [0.0, 0.0, 1.0]
    """

    def __init__(
        self,
        rpm: int,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.rate = rpm / 60.0  # tokens per second
        self.capacity = float(burst if burst is not None else rpm)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """False when rpm is 0 (no limit)."""
        return self.rate > 0

    def check(self, client: str) -> float:
        """Take a token for `client`: 0.0 when admitted, else seconds until one is free."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)


class ClientGuard:
    """Admission for /v1 requests: API key (when keys are configured), then rate limit.

    Clients are told apart by a fingerprint of their key, or by their address when the
    gateway has no keys.

    Example:
        >>> guard = ClientGuard(["k1"], RateLimiter(rpm=0))
        >>> guard.admit("Bearer k1", "10.0.0.1")
        >>> guard.admit("Bearer nope", "10.0.0.1")
        Traceback (most recent call last):
        ...
        app.errors.Unauthorized: invalid API key
    """

    def __init__(self, api_keys: Sequence[str], limiter: RateLimiter) -> None:
        self._keys = [key.encode() for key in api_keys if key]
        self.limiter = limiter

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientGuard:
        """The guard `settings` describe."""
        keys = [key.get_secret_value() for key in settings.api_keys]
        return cls(keys, RateLimiter(settings.rate_limit_rpm, settings.rate_limit_burst))

    @property
    def requires_key(self) -> bool:
        """Whether /v1 needs a key."""
        return bool(self._keys)

    def _authenticate(self, authorization: str | None) -> str:
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= secrets.compare_digest(given.encode(), key)
        if not matched:
            raise Unauthorized("invalid API key")
        return "key:" + hashlib.sha256(given.encode()).hexdigest()[:16]

    def admit(self, authorization: str | None, client_host: str | None) -> None:
        """Raise Unauthorized or RateLimited unless this request may go on."""
        client = (
            self._authenticate(authorization)
            if self.requires_key
            else f"ip:{client_host or 'unknown'}"
        )
        wait = self.limiter.check(client)
        if wait > 0:
            raise RateLimited(
                "rate limit reached for this client; retry after the time in Retry-After",
                retry_after_s=max(1, math.ceil(wait)),
            )


async def require_client(request: Request) -> None:
    """Router dependency for /v1: admit the request or raise (401 / 429)."""
    guard: ClientGuard = request.app.state.client_guard
    guard.admit(
        request.headers.get("authorization"), request.client.host if request.client else None
    )
