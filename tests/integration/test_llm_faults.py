"""A slow and broken LLM: the real llama.cpp server behind a proxy that injects faults (an HTTP
500, a 429 with Retry-After, a hang, a stream cut mid-answer; tests/llm_fault_proxy.py). Answers
degrade to extractive ones within their budget, streams always end with a final event, and the
circuit breaker stops calling a dead endpoint, then probes it. No Ray: the generator and the
single-process app (the Serve graph shares this code: serve_app.generation, serve_app.stages)."""

from __future__ import annotations

import json
import os
import time

import openai
import pytest
from fastapi.testclient import TestClient

from rag_core.settings import load_settings
from serve_app.generation import MODE_DEGRADED, MODE_GENERATIVE, AnswerGenerator, ExtractiveAnswerer
from serve_app.local import create_local_app
from tests.conftest import REPO_ROOT
from tests.fault_harness import ARTIFACTS
from tests.integration.test_llm_generator import PASSAGES, QUESTION, make_settings
from tests.llm_fault_proxy import CutStream, Fail, Hang, LLMFaultProxy


@pytest.fixture()
def proxy(llama_server):
    with LLMFaultProxy(llama_server[0]) as running:
        yield running


def generator_for(proxy: LLMFaultProxy, model: str, **generator: float) -> AnswerGenerator:
    return AnswerGenerator.from_settings(make_settings(proxy.base_url, model, **generator))


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_500_is_retried_within_the_budget_and_answered(proxy, llama_server) -> None:
    generator = generator_for(proxy, llama_server[1], max_retries=1, timeout_s=60)
    proxy.inject(Fail(500))
    answer = generator.answer(QUESTION, PASSAGES)
    assert answer.mode == MODE_GENERATIVE, answer.error
    assert proxy.requests == 2 and proxy.passed == 1
    assert generator.llm.breaker.state == "closed"


def test_a_short_retry_after_is_waited_out_and_a_long_one_opens_the_circuit_at_once(proxy, llama_server) -> None:
    generator = generator_for(proxy, llama_server[1], max_retries=1, timeout_s=30)
    proxy.inject(Fail(429, "1"))
    answer, elapsed = timed(lambda: generator.answer(QUESTION, PASSAGES))
    assert answer.mode == MODE_GENERATIVE and elapsed >= 1.0 and proxy.requests == 2

    # Retry-After: 120 does not fit in a 30 s budget: no wait, no second call, the circuit opens.
    proxy.inject(Fail(429, "120"))
    answer, elapsed = timed(lambda: generator.answer(QUESTION, PASSAGES))
    assert answer.mode == MODE_DEGRADED and elapsed < 1.0, answer
    assert "HTTP 429" in answer.error and "retry after 120 s" in answer.error
    assert proxy.requests == 3
    breaker = generator.llm.breaker.status()
    assert breaker["state"] == "open" and 100 < breaker["retry_in_s"] <= 120
    answer = generator.answer(QUESTION, PASSAGES)
    assert answer.mode == MODE_DEGRADED and answer.error.startswith("circuit open") and proxy.requests == 3
    assert answer.text == ExtractiveAnswerer(3, "english").answer(QUESTION, PASSAGES[:5]).text


def test_a_dead_endpoint_opens_the_circuit_then_a_probe_closes_it(proxy, llama_server) -> None:
    """Measured: the time a degraded answer takes while the endpoint hangs, before and after the
    circuit opens, and how many calls reach it. The budget leaves the probe's real answer (a short
    one) time to arrive on a loaded machine."""
    timeout_s, open_s = 3.0, 3.0
    generator = generator_for(
        proxy, llama_server[1], max_retries=0, timeout_s=timeout_s, max_tokens=24, circuit_failures=3, circuit_open_s=open_s
    )
    # A service that was answering when its LLM began to hang (the server's first answer also
    # pages its weights in, which is no part of this measurement).
    warm = generator_for(proxy, llama_server[1], max_retries=0, max_tokens=24)
    assert warm.answer(QUESTION, PASSAGES).mode == MODE_GENERATIVE
    proxy.inject(Hang(), Hang(), Hang())
    closed = [timed(lambda: generator.answer(QUESTION, PASSAGES)) for _ in range(3)]
    assert all(answer.mode == MODE_DEGRADED and "Timeout" in answer.error for answer, _ in closed)
    assert all(timeout_s * 0.9 <= elapsed < timeout_s + 1 for _, elapsed in closed), [e for _, e in closed]
    opened = [timed(lambda: generator.answer(QUESTION, PASSAGES)) for _ in range(20)]
    assert all(answer.error.startswith("circuit open") for answer, _ in opened)
    assert proxy.requests == 1 + 3  # 20 answers, no call to the dead endpoint
    time.sleep(open_s)
    probe, probe_s = timed(lambda: generator.answer(QUESTION, PASSAGES))
    assert probe.mode == MODE_GENERATIVE and proxy.requests == 1 + 4, (probe.error, proxy.requests, probe_s)
    status = generator.status()["circuit"]
    assert status["state"] == "closed" and status["opened_total"] == 1
    figures = {
        "fault": "LLM endpoint hangs (3 calls), then recovers",
        "degraded_answer_s_before_open": [round(e, 3) for _, e in closed],
        "degraded_answer_s_while_open_max": round(max(e for _, e in opened), 4),
        "calls_to_endpoint_while_open": 0,
        "answers_while_open": len(opened),
        "probe_after_s": open_s,
        "probe_answer_s": round(probe_s, 2),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "llm-circuit-breaker.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfault report llm-circuit-breaker: {json.dumps(figures)}")


def test_a_stream_cut_mid_answer_still_ends_with_a_degraded_final_event(proxy, llama_server) -> None:
    generator = generator_for(proxy, llama_server[1], max_retries=0, timeout_s=3)
    proxy.inject(CutStream(after_events=3))
    events, elapsed = timed(lambda: list(generator.stream(QUESTION, PASSAGES)))
    tokens, done = [e["token"] for e in events if "token" in e], events[-1]["done"]
    assert len(tokens) >= 1 and all("token" in e for e in events[:-1])
    assert done.mode == MODE_DEGRADED and "Timeout" in done.error and done.text == "".join(tokens)
    assert elapsed < 3 + 2


@pytest.fixture()
def chat_app(proxy, llama_server, samples_index, monkeypatch):
    for name in [n for n in os.environ if n.startswith("RAG_")]:
        monkeypatch.delenv(name)
    settings = load_settings(
        REPO_ROOT / "configs" / "rag.yaml",
        index_dir=samples_index.index_dir,
        llm_base_url=proxy.base_url,
        llm_model=llama_server[1],
        generator={"timeout_s": 3, "max_retries": 0, "max_tokens": 48, "temperature": 0.0},
        cache={"enabled": False},
        auth={"enabled": False, "rate_limit_enabled": False},
    )
    with TestClient(create_local_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_chat_stream_cut_by_the_llm_ends_with_a_final_chunk_and_done(proxy, chat_app) -> None:
    proxy.inject(CutStream(after_events=2))
    body = {"model": "rag", "stream": True, "messages": [{"role": "user", "content": "How many vacation days do employees get?"}]}
    with chat_app.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        blocks = [block for block in "".join(response.iter_text()).strip().split("\n\n")]
    assert blocks[-1] == "data: [DONE]", blocks[-3:]
    chunks = [json.loads(block.removeprefix("data: ")) for block in blocks[:-1]]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0]["choices"][0]["finish_reason"] == "stop"
    assert finishing[0]["rag"]["mode"] == "degraded" and finishing[0]["sources"]

    # The official client reads the same stream to its end, and /v1/query's SSE ends with `done`.
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=chat_app, max_retries=0)
    proxy.inject(CutStream(after_events=2))
    streamed = list(client.chat.completions.create(model="rag", stream=True, messages=body["messages"]))
    assert streamed[-1].choices[0].finish_reason == "stop"
    proxy.inject(CutStream(after_events=2))
    with chat_app.stream("POST", "/v1/query", json={"question": "How many vacation days do employees get?", "stream": True}) as response:
        text = "".join(response.iter_text())
    assert response.status_code == 200 and "event: done" in text, text[-500:]
