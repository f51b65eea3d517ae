"""One fail-fast Redis connection pool per ingress replica, shared by the answer cache and the
rate limiter. Every failure (down, slow, pool exhausted) raises RedisUnavailable quickly and pauses
Redis use for `retry_after_s`; the next call after the pause reconnects by itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("serve_app.redis")


class RedisUnavailable(Exception):
    """Redis cannot be used right now; callers fall back (uncached answer, per-replica limits)."""


class FailFastRedis:
    def __init__(self, url: str, pool_size: int = 16, socket_timeout_s: float = 0.05, retry_after_s: float = 1.0):
        self.url = url
        self.pool_size = pool_size
        self.socket_timeout_s = socket_timeout_s
        self.retry_after_s = retry_after_s
        self.connected: bool | None = None  # None until the first call
        self._skip_until = 0.0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> Any:
        # Connections belong to an event loop; Serve replicas and test clients may use another one.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio as redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.pool_size,
                timeout=self.socket_timeout_s,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
            )
            # No retries: a slow or absent Redis must cost one timeout, not several with backoff.
            self._client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
            self._loop = loop
        return self._client

    async def call(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        from redis.exceptions import RedisError

        if time.monotonic() < self._skip_until:
            raise RedisUnavailable("paused after a recent failure")
        try:
            result = await operation(self.client())
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._skip_until = time.monotonic() + self.retry_after_s
            if self.connected is not False:
                log.warning(
                    "Redis unavailable: answering uncached, rate limits per replica",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:300]}},
                )
            self.connected = False
            raise RedisUnavailable(str(exc)) from None
        if self.connected is False:
            log.info("Redis reconnected")
        self.connected = True
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self.call(lambda r: r.ping()))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def redis_from_settings(settings: Any) -> FailFastRedis | None:
    if not settings.redis_url:
        return None
    pool = settings.redis
    return FailFastRedis(settings.redis_url, pool.pool_size, pool.socket_timeout_s, pool.retry_after_s)
