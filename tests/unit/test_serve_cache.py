"""The answer cache component against real Redis (and the in-process store): keys, exact and
semantic hits, scopes, expiry, purge, pooling and fail-open behaviour."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rag_core.settings import load_settings
from serve_app.cache import (
    AnswerCache,
    CacheScope,
    LocalCacheStore,
    RedisCacheStore,
    normalize_question,
    pipeline_identity,
    same_content_words,
)
from serve_app.redis_conn import FailFastRedis, redis_from_settings
from tests.redis_server import SHARED_REDIS_URL, PrivateRedis, shared_redis, unique_prefix

RESPONSE = {
    "answer": "Twenty days [1].",
    "sources": [],
    "mode": "extractive",
    "index_version": "v000001",
    "reranker": None,
    "generator": "extractive",
}


def scope(**changes) -> CacheScope:
    values = {"index_version": "v000001", "filters": None, "top_k": 5, "pipeline": "p1", "access": "public"}
    values.update(changes)
    return CacheScope(**values)


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def near(vector: np.ndarray, cosine: float, seed: int = 0) -> np.ndarray:
    """A unit vector at exactly `cosine` to `vector`."""
    noise = np.random.default_rng(seed).normal(size=vector.shape).astype(np.float32)
    noise -= noise.dot(vector) * vector
    noise /= np.linalg.norm(noise)
    return unit(cosine * vector + np.sqrt(1 - cosine**2) * noise)


# -- pure logic -----------------------------------------------------------------------------------


def test_questions_differing_in_case_space_or_final_punctuation_are_one_question() -> None:
    assert normalize_question("  How many  vacation days?  ") == normalize_question("how many vacation days") == "how many vacation days"
    assert normalize_question("ＨＯＷ many？") == "how many"  # full-width forms (NFKC)
    assert normalize_question("How many days?") != normalize_question("How many weeks?")


@pytest.mark.parametrize(
    "cached, asked",
    [
        ("How many vacation days do employees receive?", "How many vacation days do the employees receive"),
        ("How many vacation days do employees receive?", "Employees receive how many vacation days?"),
        ("What is the largest city of Poland?", "Which is the largest city in Poland?"),
        ("What type of circuit are AC and NC associated with?", "AC and NC are associated with what type of circuit?"),
    ],
)
def test_rephrasings_with_the_same_content_words_match(cached: str, asked: str) -> None:
    assert same_content_words(cached, asked)


@pytest.mark.parametrize(
    "cached, asked",
    [  # SQuAD 2.0 pairs whose answers differ, cosine >= 0.99
        ("Who moved his court from Warsaw to Krakow in 1596?", "Who moved his court from Krakow to Warsaw in 1596?"),
        (
            "How many days does the mayor have to override the Council's veto?",
            "How many days does the Council have to override the mayor's veto?",
        ),
        ("Who was the Uighur King of Qocho ranked below?", "Who was the Uighur King of Qocho ranked above?"),
        ("What was Zia-ul-Haq's official state ideology?", "What was Zia-ul-Haq's non-official state ideology?"),
        (
            "Which court argued that the Treaty of Rome did not prevent it?",
            "Which court did not argue that the Treaty of Rome did not prevent it?",
        ),
        ("Who defeated Montcalm at Quebec?", "Who was defeated by Montcalm at Quebec?"),
        ("How many vacation days do employees receive?", "How many vacation days do employees get?"),
    ],
)
def test_changed_swapped_or_negated_words_do_not_match(cached: str, asked: str) -> None:
    assert not same_content_words(cached, asked)


def test_everything_that_changes_an_answer_separates_cache_entries() -> None:
    base = scope()
    assert base.exact_id("q") == scope().exact_id("Q?")
    variants = [scope(filters={"file": {"$eq": "a.pdf"}}), scope(top_k=3), scope(pipeline="p2"), scope(access="tenant-b")]
    assert len({base.partition, *(v.partition for v in variants)}) == 5
    assert len({base.exact_id("q"), *(v.exact_id("q") for v in variants)}) == 5
    # The version is not in the partition but in the key namespace (so a version can be purged).
    assert scope(index_version="v000002").partition == base.partition


def test_pipeline_identity_follows_generator_and_retrieval_settings(clean_rag_env) -> None:
    base = pipeline_identity(load_settings())
    assert pipeline_identity(load_settings()) == base
    assert pipeline_identity(load_settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m")) != base
    assert pipeline_identity(load_settings(retrieval={"dense_weight": 0.9})) != base
    assert pipeline_identity(load_settings(generator={"max_tokens": 10})) != base
    # How often replicas poll the pointer does not change answers.
    assert pipeline_identity(load_settings(retrieval={"reload_check_interval_s": 99})) == base


# -- both stores ----------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "local"])
def cache(request):
    prefix = unique_prefix("cache")
    if request.param == "redis":
        store = RedisCacheStore(FailFastRedis(SHARED_REDIS_URL, pool_size=4, socket_timeout_s=0.5))
    else:
        store = LocalCacheStore(max_entries=100, ttl_s=3600)
    yield AnswerCache(store, ttl_s=60, semantic=True, semantic_threshold=0.9, semantic_max_entries=8, key_prefix=prefix)
    if request.param == "redis":
        client = shared_redis()
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


def run(coro):
    return asyncio.run(coro)


def test_exact_hit_returns_the_stored_response(cache: AnswerCache) -> None:
    async def scenario():
        assert await cache.lookup_exact(scope(), "How many vacation days?") is None
        await cache.store_response(scope(), "How many vacation days?", None, RESPONSE)
        return await cache.lookup_exact(scope(), "how many vacation days")

    hit = run(scenario())
    assert hit is not None and hit.kind == "exact" and hit.response == RESPONSE


def test_semantic_hit_at_or_above_the_threshold_only(cache: AnswerCache) -> None:
    stored = unit(np.random.default_rng(1).normal(size=384))

    async def scenario():
        await cache.store_response(scope(), "original question", stored, RESPONSE)
        return (
            await cache.lookup_semantic(scope(), "the original question", near(stored, 0.93)),
            await cache.lookup_semantic(scope(), "the original question", near(stored, 0.85)),
            await cache.lookup_semantic(scope(), "another question", stored),
        )

    close, far, other_words = run(scenario())
    assert close is not None and close.kind == "semantic" and close.response == RESPONSE
    assert close.similarity == pytest.approx(0.93, abs=2e-3)  # vectors are kept as float16
    assert far is None
    assert other_words is None  # identical embedding, different content words: no hit


@pytest.mark.parametrize(
    "other",
    [
        {"access": "tenant-b"},
        {"filters": {"file": {"$eq": "other.pdf"}}},
        {"top_k": 3},
        {"index_version": "v000002"},
        {"pipeline": "another-generator"},
    ],
    ids=["access", "filters", "top_k", "version", "pipeline"],
)
def test_no_hit_across_scopes_filters_versions_or_pipelines(cache: AnswerCache, other: dict) -> None:
    vector = unit(np.random.default_rng(2).normal(size=384))

    async def scenario():
        await cache.store_response(scope(), "q", vector, RESPONSE)
        return (
            await cache.lookup_exact(scope(**other), "q"),
            await cache.lookup_semantic(scope(**other), "q", vector),
            await cache.lookup_exact(scope(), "q"),
        )

    exact, semantic, same_scope = run(scenario())
    assert exact is None and semantic is None
    assert same_scope is not None


def test_a_malformed_semantic_entry_is_a_miss_not_an_error() -> None:
    prefix = unique_prefix("bad")
    cache = AnswerCache(RedisCacheStore(FailFastRedis(SHARED_REDIS_URL)), key_prefix=prefix)
    shared_redis().lpush(cache._list_key(scope()), b"\x00" * 7)
    try:
        assert run(cache.lookup_semantic(scope(), "q", unit(np.ones(8)))) is None
    finally:
        for key in shared_redis().scan_iter(match=f"{prefix}:*"):
            shared_redis().delete(key)


def test_the_semantic_list_keeps_the_newest_entries(cache: AnswerCache) -> None:
    vectors = [unit(v) for v in np.random.default_rng(3).normal(size=(12, 384))]

    async def scenario():
        for number, vector in enumerate(vectors):
            await cache.store_response(scope(), f"question {number}", vector, {**RESPONSE, "answer": str(number)})
        return [await cache.lookup_semantic(scope(), f"question {n}", v) for n, v in enumerate(vectors)]

    hits = run(scenario())
    assert [h is None for h in hits] == [True] * 4 + [False] * 8  # semantic_max_entries=8
    assert [h.response["answer"] for h in hits[4:]] == [str(n) for n in range(4, 12)]


def test_purge_of_one_version_leaves_the_others(cache: AnswerCache) -> None:
    async def scenario():
        await cache.store_response(scope(), "q", None, RESPONSE)
        await cache.store_response(scope(index_version="v000002"), "q", None, RESPONSE)
        removed = await cache.purge("v000001")
        return removed, await cache.lookup_exact(scope(), "q"), await cache.lookup_exact(scope(index_version="v000002"), "q")

    removed, old, new = run(scenario())
    assert removed >= 1 and old is None and new is not None


def test_entries_expire_after_the_ttl(clean_rag_env) -> None:
    prefix = unique_prefix("ttl")
    for store in (RedisCacheStore(FailFastRedis(SHARED_REDIS_URL)), LocalCacheStore(ttl_s=1)):
        cache = AnswerCache(store, ttl_s=1, key_prefix=prefix)

        async def scenario(cache=cache):
            await cache.store_response(scope(), "q", unit(np.ones(8)), RESPONSE)
            fresh = await cache.lookup_exact(scope(), "q")
            await asyncio.sleep(1.6)
            return fresh, await cache.lookup_exact(scope(), "q"), await cache.lookup_semantic(scope(), "q", unit(np.ones(8)))

        fresh, expired, semantic = run(scenario())
        assert fresh is not None and expired is None and semantic is None, store.backend


def test_cache_from_settings_picks_redis_or_the_in_process_store(clean_rag_env) -> None:
    assert AnswerCache.from_settings(load_settings()).store.backend == "local"
    settings = load_settings(redis_url=SHARED_REDIS_URL, redis={"pool_size": 3})
    redis_cache = AnswerCache.from_settings(settings, redis_from_settings(settings))
    assert redis_cache.store.backend == "redis" and redis_cache.store.redis.pool_size == 3
    assert redis_from_settings(load_settings()) is None


# -- Redis: pooling and failure -------------------------------------------------------------------


def test_many_requests_share_the_pooled_connections(tmp_path) -> None:
    server = PrivateRedis(tmp_path).start()
    try:
        # The pool's wait timeout is the socket timeout: 300 requests queue behind 3 connections, and
        # on a busy CI machine the last ones wait longer than a short timeout. This test is about the
        # connection count, so it gives the queue room (a short wait failing fast is FailFastRedis' design).
        cache = AnswerCache(RedisCacheStore(FailFastRedis(server.url, pool_size=3, socket_timeout_s=10.0)), key_prefix=unique_prefix())
        before = server.client().info("clients")["connected_clients"]

        async def scenario():
            await cache.store_response(scope(), "q", None, RESPONSE)
            hits = await asyncio.gather(*(cache.lookup_exact(scope(), "q") for _ in range(300)))
            return hits, server.client().info("clients")["connected_clients"]

        hits, during = run(scenario())
        assert all(h is not None for h in hits)
        assert during - before <= 3  # never more than pool_size, not one per request
    finally:
        server.kill()


def test_redis_down_fails_open_fast_and_reconnects_by_itself(tmp_path) -> None:
    server = PrivateRedis(tmp_path).start()
    store = RedisCacheStore(FailFastRedis(server.url, pool_size=2, socket_timeout_s=0.05, retry_after_s=0.3))
    cache = AnswerCache(store, key_prefix=unique_prefix())

    async def scenario():
        await cache.store_response(scope(), "q", None, RESPONSE)
        assert (await cache.status())["connected"] is True
        server.kill()
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            assert await cache.lookup_exact(scope(), "q") is None  # a miss, never an exception
            await cache.store_response(scope(), "q", None, RESPONSE)
            timings.append(time.perf_counter() - started)
        down = await cache.status()
        server.start()  # same port, empty
        await asyncio.sleep(0.4)  # past retry_after_s
        await cache.store_response(scope(), "q", None, RESPONSE)
        return timings, down, await cache.status(), await cache.lookup_exact(scope(), "q")

    try:
        timings, down, up, hit = run(scenario())
    finally:
        server.kill()
    assert down == {"backend": "redis", "connected": False}
    assert max(timings) < 0.2 and sorted(timings)[len(timings) // 2] < 0.005
    assert up == {"backend": "redis", "connected": True} and hit is not None


def test_an_unroutable_redis_costs_one_short_timeout_then_is_skipped() -> None:
    # 10.255.255.1 drops packets: connecting hangs until the socket timeout.
    cache = AnswerCache(
        RedisCacheStore(FailFastRedis("redis://10.255.255.1:6379/0", socket_timeout_s=0.05, retry_after_s=5)), key_prefix=unique_prefix()
    )

    async def scenario():
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            assert await cache.lookup_exact(scope(), "q") is None
            timings.append(time.perf_counter() - started)
        return timings

    timings = run(scenario())
    assert timings[0] < 0.5
    assert max(timings[1:]) < 0.005  # skipped while paused, no new connect attempts
