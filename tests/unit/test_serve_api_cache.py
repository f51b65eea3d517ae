"""The answer cache through the HTTP API of the single-process app, on real Redis and the real
model: exact and semantic hits, streaming from the cache, scopes, a version change, and the
in-process default."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from index_builder import build_version

from rag_core.index_store import VersionedIndex
from serve_app.local import create_local_app
from tests.redis_server import SHARED_REDIS_URL, shared_redis, unique_prefix
from tests.unit.test_serve_api import CORPUS, clean_environment, settings_for, sse_events

QUESTION = "How many vacation days do employees receive?"
REPHRASED = "How many vacation days does an employee receive?"


@pytest.fixture()
def cached_app(tmp_path, model, monkeypatch):
    """(client, index) of an app with the Redis cache under a prefix of this test's own."""
    clean_environment(monkeypatch, tmp_path)
    index = VersionedIndex(tmp_path / "index")
    build_version(index, model, CORPUS)
    prefix = unique_prefix("api")
    settings = settings_for(tmp_path / "index").model_copy(update={"redis_url": SHARED_REDIS_URL})
    settings.cache.key_prefix = prefix
    with TestClient(create_local_app(settings), raise_server_exceptions=False) as client:
        yield client, index
    redis = shared_redis()
    for key in redis.scan_iter(match=f"{prefix}:*"):
        redis.delete(key)


def ask(client: TestClient, question: str, **body) -> dict:
    response = client.post("/v1/query", json={"question": question, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_repeated_question_is_an_exact_hit_with_a_fresh_request_id(cached_app) -> None:
    client, _ = cached_app
    first = ask(client, QUESTION)
    second = ask(client, "  how many VACATION days do employees receive ")
    assert first["cached"] is False and first["cache"] is None
    assert second["cached"] is True and second["cache"] == "exact"
    assert second["answer"] == first["answer"] and second["sources"] == first["sources"]
    assert second["index_version"] == first["index_version"]
    assert second["request_id"] != first["request_id"]


def test_a_rephrased_question_is_a_semantic_hit_and_a_different_one_misses(cached_app) -> None:
    client, _ = cached_app
    first = ask(client, QUESTION)
    rephrased = ask(client, REPHRASED)
    other = ask(client, "How many characters must passwords have?")
    assert rephrased["cached"] is True and rephrased["cache"] == "semantic"
    assert rephrased["answer"] == first["answer"]
    assert other["cached"] is False and "14 characters" in other["answer"]


def test_filters_and_top_k_are_part_of_the_key(cached_app) -> None:
    client, _ = cached_app
    ask(client, QUESTION)
    filtered = ask(client, QUESTION, filters={"department": "it"})
    fewer = ask(client, QUESTION, top_k=2)
    assert filtered["cached"] is False and fewer["cached"] is False
    assert all(s["file"] == "it/security-faq.txt" for s in filtered["sources"])
    assert ask(client, QUESTION, filters={"department": "it"})["cache"] == "exact"


def test_use_cache_false_answers_afresh(cached_app) -> None:
    client, _ = cached_app
    ask(client, QUESTION)
    assert ask(client, QUESTION, use_cache=False)["cached"] is False
    assert ask(client, QUESTION)["cached"] is True


def test_a_cached_answer_streams_as_tokens_then_done(cached_app) -> None:
    client, _ = cached_app
    fresh = ask(client, QUESTION)
    response = client.post("/v1/query", json={"question": QUESTION, "stream": True}, headers={"X-Request-ID": "s-1"})
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["token", "done"]
    done = events[-1][1]
    assert done["cached"] is True and done["cache"] == "exact" and done["request_id"] == "s-1"
    assert events[0][1]["text"] == done["answer"] == fresh["answer"]
    # A streamed miss is cached too.
    streamed = sse_events(client.post("/v1/query", json={"question": "When is the kitchen cleaned?", "stream": True}).text)
    assert streamed[-1][1]["cached"] is False
    assert ask(client, "When is the kitchen cleaned?")["cache"] == "exact"


def test_a_new_index_version_never_serves_the_old_answer(cached_app, model) -> None:
    client, index = cached_app
    old = ask(client, QUESTION)
    assert "25 vacation days" in old["answer"]
    changed = [(f, p, t.replace("25 vacation days", "30 vacation days"), m) for f, p, t, m in CORPUS]
    new_version = build_version(index, model, changed).version
    client.app.state.service.stages.retriever.maybe_reload()  # as the pointer-following thread would
    fresh = ask(client, QUESTION)
    assert fresh["cached"] is False and fresh["index_version"] == new_version
    assert "30 vacation days" in fresh["answer"]
    assert ask(client, REPHRASED)["answer"] == fresh["answer"]


def test_health_reports_the_cache(cached_app) -> None:
    client, _ = cached_app
    health = client.get("/health").json()
    assert health["cache"] == "redis" and health["cache_connected"] is True and health["status"] == "healthy"


def test_redis_unreachable_answers_uncached_and_health_is_degraded(tmp_path, model, monkeypatch) -> None:
    clean_environment(monkeypatch, tmp_path)
    build_version(VersionedIndex(tmp_path / "index"), model, CORPUS)
    settings = settings_for(tmp_path / "index").model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_local_app(settings), raise_server_exceptions=False) as client:
        answers = [ask(client, QUESTION) for _ in range(3)]
        health = client.get("/health").json()
    assert all(a["cached"] is False and "25 vacation days" in a["answer"] for a in answers)
    assert health["status"] == "degraded" and health["cache_connected"] is False
    assert any(reason.startswith("cache:") for reason in health["reasons"])


def test_without_redis_the_in_process_cache_answers_repeats(tmp_path, model, monkeypatch) -> None:
    clean_environment(monkeypatch, tmp_path)
    build_version(VersionedIndex(tmp_path / "index"), model, CORPUS)
    with TestClient(create_local_app(settings_for(tmp_path / "index")), raise_server_exceptions=False) as client:
        first, second, rephrased = ask(client, QUESTION), ask(client, QUESTION), ask(client, REPHRASED)
        health = client.get("/health").json()
    assert (first["cached"], second["cache"], rephrased["cache"]) == (False, "exact", "semantic")
    assert health["cache"] == "local" and health["cache_connected"] is True and health["status"] == "healthy"


def test_cache_disabled_answers_every_request_afresh(tmp_path, model, monkeypatch) -> None:
    clean_environment(monkeypatch, tmp_path)
    build_version(VersionedIndex(tmp_path / "index"), model, CORPUS)
    settings = settings_for(tmp_path / "index")
    settings.cache.enabled = False
    with TestClient(create_local_app(settings), raise_server_exceptions=False) as client:
        assert [ask(client, QUESTION)["cached"] for _ in range(2)] == [False, False]
        assert client.get("/health").json()["cache"] == "off"


def test_the_admin_purge_removes_cached_answers(cached_app, monkeypatch) -> None:
    from serve_app import cache_admin

    client, _ = cached_app
    ask(client, QUESTION)
    prefix = client.app.state.service.cache.key_prefix
    monkeypatch.setenv("RAG_REDIS_URL", SHARED_REDIS_URL)
    monkeypatch.setenv("RAG_CACHE__KEY_PREFIX", prefix)
    assert cache_admin.main(["purge"]) == 0
    assert ask(client, QUESTION)["cached"] is False
