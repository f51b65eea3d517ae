"""Token-bucket rate limits per API key, shared by all ingress replicas through one atomic Redis
script; per-replica buckets in memory when Redis is not configured or not reachable (then each
replica allows the full rate, so the cluster-wide limit is the rate times the replicas)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from serve_app.redis_conn import FailFastRedis, RedisUnavailable

# KEYS[1] = bucket; ARGV = rate per second, burst. Redis's own clock, so replicas on different
# hosts agree. Returns {allowed (0/1), seconds until one token (string), tokens left (string)}.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(wait), tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    shared: bool  # decided by the Redis bucket every replica uses

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class LocalBuckets:
    """In-process token buckets: the fallback, and the limiter when no Redis is configured."""

    def __init__(self, max_keys: int = 10_000):
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_keys = max_keys

    def take(self, key: str, rate_per_s: float, burst: int) -> tuple[bool, float]:
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(burst), now))
        tokens = min(burst, tokens + (now - at) * rate_per_s)
        if tokens >= 1:
            allowed, wait, tokens = True, 0.0, tokens - 1
        else:
            allowed, wait = False, (1 - tokens) / rate_per_s
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # bounded memory; a reset bucket only ever allows more
        self._buckets[key] = (tokens, now)
        return allowed, wait


class RateLimiter:
    def __init__(self, redis: FailFastRedis | None, key_prefix: str = "rag:ratelimit"):
        self.redis = redis
        self.key_prefix = key_prefix
        self.local = LocalBuckets()
        self._script: Any = None

    async def check(self, bucket: str, rate_per_minute: float, burst: int) -> Decision:
        rate_per_s = rate_per_minute / 60.0
        if self.redis is not None:
            try:
                allowed, wait, _ = await self.redis.call(
                    lambda r: self._bucket_script(r)(keys=[f"{self.key_prefix}:{bucket}"], args=[rate_per_s, burst])
                )
                return Decision(bool(int(allowed)), float(wait), shared=True)
            except RedisUnavailable:
                pass
        allowed, wait = self.local.take(bucket, rate_per_s, burst)
        return Decision(allowed, wait, shared=False)

    def _bucket_script(self, client: Any) -> Any:
        # register_script keeps the SHA and falls back to EVAL when Redis does not know it yet.
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(TOKEN_BUCKET_LUA)
        return self._script
