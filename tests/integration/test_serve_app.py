"""The Serve app over HTTP on real indexes: `serve run configs/serve.yaml` as users start it, and
graphs deployed into the shared Ray session for the version-swap, no-index and LLM-down cases."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT, SAMPLES_DIR
from tests.integration.conftest import IMAGE_PDF_FACTS, assert_found_by_ocr, run_ingest

SERVE_PORT = 8000  # configs/serve.yaml


def wait_for(url: str, status: int = 200, timeout_s: float = 240) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer {status} in {timeout_s} s (last: {last and last.status_code} {last and last.text[:300]})")


@pytest.fixture(scope="module")
def serve_run_service(pdf_index):
    """`serve run configs/serve.yaml` exactly as in the README, on its own local Ray (-a local)."""
    index_dir, _ = pdf_index
    # Otherwise the tests below would silently talk to whatever already serves that port.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", SERVE_PORT)) == 0:
            pytest.fail(f"port {SERVE_PORT} (configs/serve.yaml) is already in use by another process; stop it first (e.g. `ray stop`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "RAY_ADDRESS"))}
    # The module sends more requests from one client than the anonymous rate limit allows.
    env.update(
        RAG_INDEX_DIR=str(index_dir), RAG_AUTH__RATE_LIMIT_ENABLED="false", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    )
    process = subprocess.Popen(
        ["serve", "run", "-a", "local", "configs/serve.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{SERVE_PORT}"
    try:
        wait_for(f"{base}/health", timeout_s=300)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)


@pytest.mark.timeout(2400)  # run alone, this module builds the session's PDF index in this test's setup
def test_health_reports_the_index_and_components(serve_run_service, pdf_index):
    _, summary = pdf_index
    health = httpx.get(f"{serve_run_service}/health").json()
    assert health["status"] == "healthy", health
    assert health["chunks_indexed"] == summary["chunks_total"]
    assert health["index_version"] == summary["index_version"]
    assert health["embedding_model"] == summary["embedding_model"]
    assert health["reranker"] == "fallback:retrieval-order"  # no cross-encoder weights offline
    assert health["generator"] == "extractive"
    assert health["startup_time_seconds"] > 0 and health["last_indexed_at"]


@pytest.mark.parametrize("fact", IMAGE_PDF_FACTS, ids=[f"{f['file']}-p{f['page']}" for f in IMAGE_PDF_FACTS])
def test_each_image_only_pdf_is_searchable_through_ocr(serve_run_service, pdf_index, fact):
    """A question over an OCR'd page of every image-only scan in the shared PDFs (plus a scanned
    page of a mixed PDF) finds that page, marked as OCR'd."""
    assert fact["file"] not in {f["file"] for f in pdf_index[1]["files_failed"]}
    response = httpx.post(f"{serve_run_service}/v1/retrieve", json={"query": fact["question"], "top_k": 10}, timeout=60)
    assert response.status_code == 200, response.text
    assert_found_by_ocr(response.json()["results"], fact)


def test_query_answers_with_cited_sources(serve_run_service, pdf_index):
    response = httpx.post(
        f"{serve_run_service}/v1/query",
        json={"question": "What is the Dense Passage Retriever trained on?"},
        headers={"X-Request-ID": "trace-42"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == body["request_id"] == "trace-42"
    assert body["mode"] == "extractive" and body["cached"] is False
    assert body["index_version"] == pdf_index[1]["index_version"]
    assert 1 <= len(body["sources"]) <= 5
    assert {"file", "page", "chunk_id", "score", "text"} <= set(body["sources"][0])
    assert any(s["file"].startswith("unstructured__multi-column") for s in body["sources"])
    cited = {int(n) for n in __import__("re").findall(r"\[(\d+)\]", body["answer"])}
    assert cited and cited <= set(range(1, len(body["sources"]) + 1))
    assert body["latency_ms"] > 0
    generated = httpx.post(f"{serve_run_service}/v1/query", json={"question": "What is DPR?"}, timeout=60)
    assert len(generated.headers["X-Request-ID"]) >= 16
    assert generated.headers["X-Request-ID"] == generated.json()["request_id"]


def test_retrieve_is_ranked_and_honours_filters(serve_run_service):
    url = f"{serve_run_service}/v1/retrieve"
    dense = httpx.post(url, json={"query": "federal register notice", "top_k": 10, "mode": "dense"}).json()
    scores = [r["score"] for r in dense["results"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    hybrid = httpx.post(url, json={"query": "federal register notice", "top_k": 10}).json()
    assert hybrid["mode"] == "hybrid" and len(hybrid["results"]) == 10
    only = httpx.post(url, json={"query": "table of statistics", "top_k": 20, "filters": {"file": "camelot__us-001.pdf"}}).json()
    assert only["results"] and {r["file"] for r in only["results"]} == {"camelot__us-001.pdf"}
    chosen = ["pdfplumber__ca-warn-report.pdf", "camelot__budget.pdf"]
    within = httpx.post(url, json={"query": "report", "top_k": 30, "filters": {"file": {"$in": chosen}}, "mode": "lexical"}).json()
    assert within["results"] and {r["file"] for r in within["results"]} <= set(chosen)
    excluded = httpx.post(
        url,
        json={
            "query": "dense passage retrieval",
            "top_k": 20,
            "filters": {"$and": [{"file": {"$ne": "unstructured__multi-column.pdf"}}, {"page": {"$nin": [1]}}]},
        },
    ).json()
    assert all(r["file"] != "unstructured__multi-column.pdf" and r["page"] != 1 for r in excluded["results"])


def test_streaming_sends_tokens_then_sources(serve_run_service):
    with httpx.stream("POST", f"{serve_run_service}/v1/query", json={"question": "What is DPR?", "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "token" and events[-1] == "done" and events.count("done") == 1


@pytest.mark.parametrize(
    "path, payload, status",
    [
        ("/v1/query", {"question": "   "}, 422),
        ("/v1/query", {"question": "x" * 4001}, 422),
        ("/v1/query", {"question": "ok", "top_k": 0}, 422),
        ("/v1/query", {"question": "ok", "top_k": 21}, 422),
        ("/v1/query", {"question": "ok", "filters": {"file": {"$regex": ".*"}}}, 422),
        ("/v1/query", {"question": "ok", "unexpected": 1}, 422),
        ("/v1/retrieve", {"query": "ok", "top_k": 101}, 422),
        ("/v1/retrieve", {"query": "ok", "filters": {"$or": []}}, 422),
        ("/v1/query", "{not json", 422),
        ("/v1/query", {"question": "x" * 70_000}, 413),
    ],
)
def test_bad_input_gets_a_json_4xx_without_a_trace(serve_run_service, path, payload, status):
    content = payload if isinstance(payload, str) else json.dumps(payload)
    response = httpx.post(f"{serve_run_service}{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert "error" in response.json() and "Traceback" not in response.text


# -- the OpenAI-compatible chat API, through the official client ------------------------------------
GAO_SUMMARY = "unstructured__invalid-pdf-structure-pdfminer-one-page.pdf"  # benchmarks/data/conversations.jsonl, pdf-11


def openai_client(base: str, api_key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, timeout=60, max_retries=0)


def test_chat_completions_through_the_openai_client(serve_run_service):
    client = openai_client(serve_run_service)
    assert [m.id for m in client.models.list().data] == ["rag", "rag/docs"]  # the index, and its one named source
    question = [{"role": "user", "content": "What is the open-source library for document image analysis called?"}]
    completion = client.chat.completions.create(model="rag", messages=question, extra_body={"use_cache": False})
    answer = completion.choices[0].message.content
    assert "[1]" in answer and any(s["file"].startswith("unstructured__layout-parser") for s in completion.sources)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="rag", messages=question, stream=True, stream_options={"include_usage": True}, extra_body={"use_cache": False}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finishing) == 1 and [s["chunk_id"] for s in finishing[0].sources] == [s["chunk_id"] for s in completion.sources]
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_a_three_turn_conversation_retrieves_each_follow_up(serve_run_service):
    client = openai_client(serve_run_service)
    messages: list[dict] = []
    turns = [
        (
            "In what month and year did the White House release the National Cybersecurity Strategy reviewed in the GAO summary?",
            "March 2023",
        ),
        ("How many pillars is it organised around?", "five pillars"),
        ("For how many of them does it actually identify investments?", "four of the five pillars"),
    ]
    for number, (question, fact) in enumerate(turns):
        messages.append({"role": "user", "content": question})
        completion = client.chat.completions.create(model="rag", messages=messages)
        answer = completion.choices[0].message.content
        assert GAO_SUMMARY in {s["file"] for s in completion.sources}, (question, completion.rag)
        assert completion.rag["rewrite"] == ("as-is" if number == 0 else "rules")
        assert fact in " ".join(" ".join(s["text"].split()) for s in completion.sources), completion.rag
        messages.append({"role": "assistant", "content": answer})


def test_a_new_version_is_served_while_queries_run_with_zero_failures(samples_index, ray_cluster, deploy_app):
    source, index_dir = samples_index.source, samples_index.index_dir
    base = deploy_app("swap", index_dir=index_dir, retrieval={"reload_check_interval_s": 0.5})
    wait_for(f"{base}/health")

    outcomes: Counter = Counter()
    versions: Counter = Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{base}/v1/query", json={"question": "How many vacation days do employees get?"})
                outcomes[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["index_version"]] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        (source / "heron.txt").write_text("Project Heron studies river birds; its field station opens in May.\n")
        assert run_ingest(index_dir, ray_cluster, "--source", str(source)).returncode == 0
        deadline = time.monotonic() + 60
        while versions["v000002"] < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(outcomes) == {200}, outcomes
    assert versions["v000001"] > 0 and versions["v000002"] >= 20, versions
    hit = httpx.post(f"{base}/v1/retrieve", json={"query": "When does the Heron field station open?", "top_k": 1}).json()
    assert hit["index_version"] == "v000002" and hit["results"][0]["file"] == "heron.txt"


def test_without_an_index_the_service_starts_unhealthy_then_recovers(tmp_path, ray_cluster, deploy_app):
    index_dir = tmp_path / "index"
    base = deploy_app("empty", index_dir=index_dir, retrieval={"reload_check_interval_s": 0.5})
    health = wait_for(f"{base}/health", status=503)
    assert health.json()["status"] == "unhealthy" and any("index" in r for r in health.json()["reasons"])
    query = httpx.post(f"{base}/v1/query", json={"question": "anything?"}, timeout=30)
    assert query.status_code == 503 and query.headers.get("Retry-After") and "index" in query.json()["error"]

    assert run_ingest(index_dir, ray_cluster, "--source", str(SAMPLES_DIR)).returncode == 0
    assert wait_for(f"{base}/health", status=200, timeout_s=60).json()["index_version"] == "v000001"
    assert httpx.post(f"{base}/v1/query", json={"question": "hotel limit in London?"}, timeout=30).status_code == 200


def test_an_unreachable_llm_gives_a_degraded_answer_within_the_timeout(samples_index, deploy_app):
    index_dir = samples_index.index_dir
    base = deploy_app(
        "degraded",
        index_dir=index_dir,
        llm_base_url="http://127.0.0.1:9/v1",
        llm_model="nothing-here",
        generator={"timeout_s": 3, "max_retries": 1},
    )
    wait_for(f"{base}/health")
    started = time.monotonic()
    response = httpx.post(f"{base}/v1/query", json={"question": "How many vacation days do employees get?"}, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "degraded" and "27 days" in body["answer"] and "[1]" in body["answer"]
    assert elapsed < 3 + 2
    health = httpx.get(f"{base}/health").json()
    assert health["status"] == "degraded" and any("LLM" in r for r in health["reasons"])


ONE_AT_A_TIME = {"num_replicas": 1, "autoscaling_config": None, "max_ongoing_requests": 1, "max_queued_requests": 1}


def burst_of_retrievals(base: str, requests: int = 40) -> list[httpx.Response]:
    """`requests` retrievals at once against a deployment that takes one at a time: some are
    answered, the rest refused, and nothing else (no 500, no reset)."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = (client.post(f"{base}/v1/retrieve", json={"query": f"vacation days {i}"}) for i in range(requests))
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0 and statuses[200] > 0, statuses
    return responses


def test_a_full_queue_sheds_load_with_503_and_retry_after(samples_index, ray_cluster, deploy_app):
    index_dir = samples_index.index_dir
    base = deploy_app("shed", index_dir=index_dir, deployment_options={"Embedder": ONE_AT_A_TIME})
    wait_for(f"{base}/health")

    responses = burst_of_retrievals(base)
    for response in (r for r in responses if r.status_code == 503):
        assert response.headers.get("Retry-After") and "overloaded" in response.json()["error"]
    # ...and shed requests are counted on the node's Prometheus endpoint.
    from tests.integration.test_observability import scrape, total

    deadline = time.monotonic() + 60
    while total(scrape(ray_cluster.metrics_url), "ray_rag_load_shed_total", reason="queue_full", application="shed") < 1:
        assert time.monotonic() < deadline, "rag_load_shed_total never appeared"
        time.sleep(2)


def test_a_full_ingress_queue_is_answered_503_with_retry_after_by_serves_proxy(samples_index, deploy_app):
    """When the Ingress itself cannot take more (every replica's queue full), Serve's proxy
    refuses the request before any of this service's code runs: 503 with Retry-After, so clients
    back off instead of piling on, and the requests it did take still succeed."""
    base = deploy_app("shed-ingress", index_dir=samples_index.index_dir, deployment_options={"Ingress": ONE_AT_A_TIME})
    wait_for(f"{base}/health")

    responses = burst_of_retrievals(base)
    for response in (r for r in responses if r.status_code == 503):
        assert response.headers.get("Retry-After") == "1", response.headers
        assert "backpressure" in response.text.lower(), response.text
    # Liveness is answered by the Ingress too; once the burst is over it is free again.
    assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200
