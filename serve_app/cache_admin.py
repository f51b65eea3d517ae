"""Cache administration for operators:

    python -m serve_app.cache_admin purge                    # every cached answer
    python -m serve_app.cache_admin purge --version v000003  # one index version's answers

Works on the shared Redis cache (`redis_url`); an in-process cache lives and dies with its
ingress replica and has nothing to purge from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from rag_core.settings import load_settings
from serve_app.cache import AnswerCache, CacheUnavailable, RedisCacheStore
from serve_app.redis_conn import FailFastRedis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["purge"])
    parser.add_argument("--version", help="only this index version's entries")
    parser.add_argument("--config", help="settings YAML (default: RAG_CONFIG or configs/rag.yaml)")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    if not settings.redis_url:
        print("redis_url is not set: the cache is in-process per replica; restart the app to clear it", file=sys.stderr)
        return 2
    # An operator command may wait longer than a request would.
    redis = FailFastRedis(settings.redis_url, pool_size=1, socket_timeout_s=5.0, retry_after_s=0)
    store = RedisCacheStore(redis)
    cache = AnswerCache(store, key_prefix=settings.cache.key_prefix)

    async def purge() -> int:
        try:
            return await cache.purge(args.version)
        finally:
            await redis.close()

    try:
        removed = asyncio.run(purge())
    except CacheUnavailable as exc:
        print(f"Redis not reachable at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"purged_keys": removed, "version": args.version, "prefix": settings.cache.key_prefix}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
