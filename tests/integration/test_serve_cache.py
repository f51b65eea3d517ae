"""The answer cache in the Serve graph, over HTTP, with real Redis: hits, scopes, a re-ingest that
must never be answered from the old version, and Redis stopped and restarted under load."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.conftest import run_ingest
from tests.integration.test_serve_app import wait_for
from tests.redis_server import SHARED_REDIS_URL, PrivateRedis, shared_redis, unique_prefix

QUESTION = "How many vacation days do employees get?"


@pytest.fixture()
def prefix():
    value = unique_prefix("serve")
    yield value
    client = shared_redis()
    for key in client.scan_iter(match=f"{value}:*"):
        client.delete(key)


def ask(base: str, question: str, **body) -> dict:
    response = httpx.post(f"{base}/v1/query", json={"question": question, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_health(base: str, predicate, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    health: dict = {}
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health", timeout=10).json()
        if predicate(health):
            return health
        time.sleep(0.2)
    pytest.fail(f"health never matched in {timeout_s} s: {health}")


def test_hits_scopes_and_a_reingest_never_served_stale(samples_index, ray_cluster, deploy_app, prefix):
    source, index_dir = samples_index.source, samples_index.index_dir
    base = deploy_app(
        "cached", index_dir=index_dir, redis_url=SHARED_REDIS_URL, cache={"key_prefix": prefix}, retrieval={"reload_check_interval_s": 0.5}
    )
    assert wait_for(f"{base}/health").json()["cache"] == "redis"

    first = ask(base, QUESTION)
    exact = ask(base, "how many vacation days do employees get")
    semantic = ask(base, "How many vacation days does an employee get?")
    filtered = ask(base, QUESTION, filters={"file": "security-faq.txt"})
    assert (first["cached"], exact["cache"], semantic["cache"], filtered["cached"]) == (False, "exact", "semantic", False)
    assert "27 days" in first["answer"] and exact["answer"] == semantic["answer"] == first["answer"]
    assert all(s["file"] == "security-faq.txt" for s in filtered["sources"])
    assert any(key.startswith(f"{prefix}:".encode()) for key in shared_redis().scan_iter(match=f"{prefix}:*"))

    # The document changes; after the re-ingest the same question must be answered from the new text.
    policy = source / "vacation-policy.md"
    policy.write_text(policy.read_text().replace("27 days", "31 days"))
    result = run_ingest(index_dir, ray_cluster, "--source", str(source))
    assert result.returncode == 0 and result.summary["index_version"] == "v000002"
    wait_for_health(base, lambda h: h["index_version"] == "v000002")
    after = ask(base, QUESTION)
    assert after["index_version"] == "v000002" and after["cached"] is False
    assert "31 days" in after["answer"] and "27 days" not in after["answer"]
    again = ask(base, QUESTION)
    assert again["cache"] == "exact" and "31 days" in again["answer"]


def test_redis_stopped_mid_run_fails_no_request_and_reconnects(tmp_path, samples_index, deploy_app):
    redis_server = PrivateRedis(tmp_path).start()
    index_dir = samples_index.index_dir
    base = deploy_app(
        "cachefail", index_dir=index_dir, redis_url=redis_server.url, redis={"retry_after_s": 0.5}, auth={"rate_limit_enabled": False}
    )
    wait_for(f"{base}/health")
    questions = [
        QUESTION,
        "What is the hotel limit in London?",
        "Who do I page for a production outage?",
        "How long must passwords be?",
        "When are expense reports due?",
    ]

    phase = ["up"]
    outcomes: Counter = Counter()
    stop = threading.Event()

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = offset
            while not stop.is_set():
                n += 1
                current = phase[0]
                response = client.post(f"{base}/v1/query", json={"question": questions[n % len(questions)]})
                cached = response.status_code == 200 and response.json()["cached"]
                outcomes[(current, response.status_code, cached)] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        redis_server.kill()
        phase[0] = "down"
        down = wait_for_health(base, lambda h: h["cache_connected"] is False, timeout_s=30)
        time.sleep(3)
        redis_server.start()  # same port, empty
        up = wait_for_health(base, lambda h: h["cache_connected"] is True, timeout_s=30)
        phase[0] = "back"
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        redis_server.kill()

    statuses = Counter(status for (_, status, _), count in outcomes.items() for _ in range(count))
    assert set(statuses) == {200}, outcomes  # zero failed requests throughout
    assert down["status"] == "degraded" and any(r.startswith("cache:") for r in down["reasons"])
    assert up["status"] == "healthy"
    assert outcomes[("up", 200, True)] > 0 and outcomes[("down", 200, False)] > 0, outcomes
    assert outcomes[("back", 200, True)] > 0, outcomes  # reconnected by itself and caching again
