"""The HTTP API of the single-process app (serve_app.local) over a small real index: routes,
request ids, streaming, input validation and error mapping, and an app started before any ingest."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from index_builder import build_version

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex, VersionInfo
from rag_core.settings import load_settings
from serve_app.local import create_local_app
from serve_app.schemas import MAX_QUESTION_CHARS

CORPUS = [
    (
        "handbook/vacation-policy.md",
        1,
        "Employees receive 25 vacation days per year. Unused vacation days can be carried over until March 31.",
        {"department": "hr"},
    ),
    (
        "handbook/vacation-policy.md",
        2,
        "Vacation requests must be approved by your manager at least two weeks in advance.",
        {"department": "hr"},
    ),
    ("it/security-faq.txt", 1, "Passwords must be at least 14 characters long and are rotated every 90 days.", {"department": "it"}),
    ("it/security-faq.txt", 2, "Report phishing emails to the security team with the Report button in Outlook.", {"department": "it"}),
    (
        "finance/expenses.pdf",
        3,
        "Travel expenses are reimbursed within 30 days when receipts are submitted through the finance portal.",
        {"department": "finance"},
    ),
    ("office/kitchen.txt", 1, "The office kitchen is cleaned every Friday afternoon; please label your food in the refrigerator.", {}),
    ("office/parking.md", 1, "Bicycle parking is available in the basement garage next to the elevators.", {}),
]
IT_CHUNKS = {"it/security-faq.txt#0", "it/security-faq.txt#1"}
UNAVAILABLE_RERANKER = "no-such-org/no-such-cross-encoder-xyz"


def clean_environment(patch: pytest.MonkeyPatch, workdir: Path) -> None:
    """As the clean_rag_env fixture: no RAG_* variables, no configs/rag.yaml in the working directory."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            patch.delenv(name)
    patch.chdir(workdir)
    patch.setenv("HF_HUB_OFFLINE", "1")


def settings_for(index_dir: Path):
    return load_settings(
        index_dir=index_dir,
        embedding_device="cpu",
        rerank={"model": UNAVAILABLE_RERANKER},  # the documented fallback, wherever the tests run
        retrieval={"reload_check_interval_s": 3600},  # the pointer-following thread stays asleep
        auth={"rate_limit_enabled": False},  # tests of rate limits turn them on
    )


def build_index(index_dir: Path, model: EmbeddingModel) -> VersionInfo:
    return build_version(VersionedIndex(index_dir), model, CORPUS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(client, index version info, embedding model name) for an app over CORPUS."""
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("api")
        clean_environment(patch, workdir)
        model = EmbeddingModel.from_setting("auto", device="cpu")
        info = build_index(workdir / "index", model)
        app = create_local_app(settings_for(workdir / "index"))
        yield TestClient(app, raise_server_exceptions=False), info, model.spec.name


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return served[0]


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def assert_error_json(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# -- health ---------------------------------------------------------------------------------------
def test_health_reports_the_served_index(served) -> None:
    client, info, model_name = served
    response = client.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert set(health) >= {
        "status",
        "chunks_indexed",
        "index_version",
        "embedding_model",
        "reranker",
        "generator",
        "cache_connected",
        "last_indexed_at",
        "startup_time_seconds",
    }
    assert health["status"] == "healthy" and health["reasons"] == []
    assert health["chunks_indexed"] == len(CORPUS)
    assert health["index_version"] == info.version == "v000001"
    assert health["embedding_model"] == model_name
    assert health["reranker"] == "fallback:retrieval-order"
    assert health["generator"] == "extractive"
    assert health["cache"] == "local" and health["cache_connected"] is True  # in-process by default
    assert health["last_indexed_at"] == info.created_at
    assert isinstance(health["startup_time_seconds"], float) and 0 <= health["startup_time_seconds"] < 120
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


# -- retrieve -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [None, "dense", "lexical", "hybrid"])
def test_retrieve_returns_results_best_first(client: TestClient, mode: str | None) -> None:
    body = {"query": "How long must passwords be?", "top_k": 3, **({"mode": mode} if mode else {})}
    response = client.post("/v1/retrieve", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["mode"] == (mode or "hybrid")
    assert data["index_version"] == "v000001" and data["reranker"] is None and data["latency_ms"] >= 0
    results = data["results"]
    assert 1 <= len(results) <= 3
    fields = {"file", "source", "page", "location", "chunk_id", "score", "text"}
    assert all(set(r) == fields and r["location"]["page"] == r["page"] for r in results)
    assert results[0] == {
        "file": "it/security-faq.txt",
        "source": None,  # indexed without a named source
        "page": 1,
        "chunk_id": "it/security-faq.txt#0",
        "score": results[0]["score"],
        "text": "Passwords must be at least 14 characters long and are rotated every 90 days.",
        # Chunks stored without a location (as before locations existed) are pages.
        "location": {
            "kind": "page",
            "page": 1,
            "slide": None,
            "sheet": None,
            "rows": None,
            "heading": None,
            "ocr": False,
            "ocr_confidence": None,
        },
    }
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    if mode != "lexical":
        assert len(results) == 3


def test_retrieve_honours_filters_top_k_and_the_fallback_reranker(client: TestClient) -> None:
    query = "vacation days passwords expenses kitchen"
    filtered = client.post("/v1/retrieve", json={"query": query, "top_k": 10, "filters": {"department": {"$in": ["it"]}}}).json()
    assert {r["chunk_id"] for r in filtered["results"]} == IT_CHUNKS

    assert len(client.post("/v1/retrieve", json={"query": query, "top_k": 2, "mode": "dense"}).json()["results"]) == 2
    plain = client.post("/v1/retrieve", json={"query": query, "top_k": 4}).json()
    reranked = client.post("/v1/retrieve", json={"query": query, "top_k": 4, "rerank": True}).json()
    assert reranked["reranker"] == "fallback:retrieval-order"
    assert [r["chunk_id"] for r in reranked["results"]] == [r["chunk_id"] for r in plain["results"]]


def test_retrieve_by_document_ranks_files_by_all_their_passages(client: TestClient) -> None:
    by_chunk = client.post("/v1/retrieve", json={"query": "vacation days and vacation requests", "top_k": 3}).json()
    assert by_chunk["documents"] is None
    body = client.post("/v1/retrieve", json={"query": "vacation days and vacation requests", "top_k": 3, "group_by": "document"}).json()
    documents = body["documents"]
    assert len(documents) == 3 and len({d["file"] for d in documents}) == 3
    first = documents[0]
    assert first["file"] == "handbook/vacation-policy.md"
    assert {p["chunk_id"] for p in first["passages"]} == {"handbook/vacation-policy.md#0", "handbook/vacation-policy.md#1"}
    best, second = (p["score"] for p in first["passages"])
    assert best >= second
    assert first["score"] == pytest.approx(best + 0.3 * second, abs=1e-5)  # retrieval.document_decay
    assert [d["score"] for d in documents] == sorted((d["score"] for d in documents), reverse=True)
    for d in documents:
        scores = [p["score"] for p in d["passages"]]
        assert scores == sorted(scores, reverse=True)
        assert d["score"] == pytest.approx(sum(s * 0.3**i for i, s in enumerate(scores)), abs=1e-5)
    assert body["results"] == [d["passages"][0] for d in documents]  # one passage per document, its best

    # Reranked (here the documented fallback scorer), documents sum the candidates' scores scaled to 0-1.
    query = {"query": "vacation days and vacation requests", "top_k": 5, "group_by": "document", "rerank": True}
    reranked = client.post("/v1/retrieve", json=query).json()
    assert reranked["reranker"] == "fallback:retrieval-order"
    assert reranked["documents"][0]["score"] >= 1.0 and all(0 <= d["score"] <= 1 / 0.7 for d in reranked["documents"])
    mmr = client.post("/v1/retrieve", json={**query, "mmr": True})
    assert mmr.status_code == 422 and "group_by: document" in mmr.text


# -- query ----------------------------------------------------------------------------------------
def test_query_answers_extractively_with_sources_and_echoes_the_request_id(client: TestClient) -> None:
    response = client.post(
        "/v1/query", json={"question": "How many vacation days do employees receive?", "top_k": 3}, headers={"X-Request-ID": "req-42.a:b"}
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["mode"] == "extractive" and data["generator"] == "extractive"
    assert data["cached"] is False and data["index_version"] == "v000001"
    assert data["request_id"] == "req-42.a:b" == response.headers["X-Request-ID"]
    assert len(data["sources"]) == 3
    assert data["sources"][0]["chunk_id"] == "handbook/vacation-policy.md#0"
    assert all(set(s) == {"file", "source", "page", "location", "chunk_id", "score", "text"} for s in data["sources"])
    # The answer quotes the answering sentence and cites its source by number.
    assert "Employees receive 25 vacation days per year. [1]" in data["answer"]
    for number in map(int, re.findall(r"\[(\d+)\]", data["answer"])):
        assert 1 <= number <= len(data["sources"])


def server_timing(response) -> dict[str, float]:
    return {
        name: float(dur.removeprefix("dur="))
        for name, dur in (part.strip().split(";") for part in response.headers["server-timing"].split(","))
    }


def test_responses_carry_their_stage_times_as_server_timing(client: TestClient) -> None:
    retrieved = client.post("/v1/retrieve", json={"query": "how many vacation days", "top_k": 2, "mode": "hybrid"})
    stages = server_timing(retrieved)
    assert set(stages) == {"embed", "retrieve", "total"}
    assert 0 < stages["embed"] + stages["retrieve"] <= stages["total"]
    assert stages["total"] >= retrieved.json()["latency_ms"] > 0
    lexical = server_timing(client.post("/v1/retrieve", json={"query": "vacation days", "mode": "lexical"}))
    assert "embed" not in lexical and lexical["retrieve"] > 0
    answered = client.post("/v1/query", json={"question": "How many vacation days do employees get?", "use_cache": False})
    assert {"embed", "retrieve", "generate", "total"} <= set(server_timing(answered))


def test_a_request_id_is_generated_when_absent_or_unsafe(client: TestClient) -> None:
    first = client.post("/v1/query", json={"question": "When is the kitchen cleaned?"})
    second = client.post("/v1/query", json={"question": "When is the kitchen cleaned?"})
    for response in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", response.json()["request_id"])
        assert response.json()["request_id"] == response.headers["X-Request-ID"]
    assert first.json()["request_id"] != second.json()["request_id"]

    unsafe = client.post("/v1/query", json={"question": "When is the kitchen cleaned?"}, headers={"X-Request-ID": "bad id\twith<spaces>"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.json()["request_id"])
    assert unsafe.headers["X-Request-ID"] == unsafe.json()["request_id"]


def test_query_stream_sends_tokens_then_one_done_event_with_sources(client: TestClient) -> None:
    response = client.post(
        "/v1/query", json={"question": "How many vacation days do employees receive?", "stream": True}, headers={"X-Request-ID": "stream-1"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["X-Request-ID"] == "stream-1"
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1
    assert len(names) >= 2 and set(names[:-1]) == {"token"}
    done = events[-1][1]
    assert done["answer"] == "".join(data["text"] for name, data in events[:-1])
    assert "Employees receive 25 vacation days per year." in done["answer"]
    assert done["mode"] == "extractive" and done["request_id"] == "stream-1"
    assert done["sources"] and done["sources"][0]["chunk_id"] == "handbook/vacation-policy.md#0"


def test_the_largest_valid_inputs_are_accepted(client: TestClient) -> None:
    question = ("What about vacation days? " * 200)[:MAX_QUESTION_CHARS]
    assert len(question) == 4000
    assert client.post("/v1/query", json={"question": question, "top_k": 20}).status_code == 200
    assert client.post("/v1/retrieve", json={"query": "vacation", "top_k": 100}).status_code == 200


# -- bad input ------------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("/v1/query", {"question": "   "}, "question"),
    ("/v1/query", {"question": ""}, "question"),
    ("/v1/query", {"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question"),
    ("/v1/query", {}, "question"),
    ("/v1/query", {"question": 42}, "question"),
    ("/v1/query", {"question": "vacation?", "top_k": 0}, "top_k"),
    ("/v1/query", {"question": "vacation?", "top_k": 21}, "top_k"),
    ("/v1/query", {"question": "vacation?", "filters": {"file": {"$regex": ".*"}}}, "filters"),
    ("/v1/query", {"question": "vacation?", "filters": {"page": {"$gt": 1}}}, "filters"),
    ("/v1/query", {"question": "vacation?", "filters": {"file": {"$in": []}}}, "filters"),
    ("/v1/query", {"question": "vacation?", "filters": "file"}, "filters"),
    ("/v1/query", {"question": "vacation?", "temperature": 0.2}, "temperature"),
    ("/v1/retrieve", {"query": "vacation", "top_k": 101}, "top_k"),
    ("/v1/retrieve", {"query": "vacation", "top_k": 0}, "top_k"),
    ("/v1/retrieve", {"query": "\n\t "}, "query"),
    ("/v1/retrieve", {"query": "vacation", "mode": "fuzzy"}, "mode"),
    ("/v1/retrieve", {"query": "vacation", "filters": {"$where": "1"}}, "filters"),
    ("/v1/retrieve", {"query": "vacation", "question": "extra"}, "question"),
    ("/v1/retrieve", {"query": "vacation", "group_by": "page"}, "group_by"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_REQUESTS, ids=[f"{p}-{json.dumps(b)[:40]}" for p, b, _ in BAD_REQUESTS])
def test_bad_input_is_a_422_json_error_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    response = client.post(path, json=body, headers={"X-Request-ID": "bad-1"})
    error = assert_error_json(response, 422)
    assert error["error"] == "invalid request" and error["request_id"] == "bad-1"
    assert any(field in detail["loc"] for detail in error["detail"])
    assert all(set(detail) == {"loc", "msg", "type"} for detail in error["detail"])
    assert "x" * 100 not in response.text  # the input is not echoed back


@pytest.mark.parametrize("raw", [b'{"question": ', b"question=vacation", b'{"question": "a",}', b"\xff\xfe"])
def test_malformed_json_is_a_422_json_error(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/query", content=raw, headers={"content-type": "application/json"})
    assert_error_json(response, 422)


def test_a_body_over_the_limit_is_refused_with_413(client: TestClient) -> None:
    body = json.dumps({"question": "vacation " * 10_000}).encode()
    assert len(body) > 65_536
    response = client.post("/v1/query", content=body, headers={"content-type": "application/json", "X-Request-ID": "big-1"})
    assert_error_json(response, 413)
    assert "65536" in response.json()["error"]
    assert response.headers["X-Request-ID"] == "big-1"


def test_unknown_routes_and_methods_are_json_errors(client: TestClient) -> None:
    assert_error_json(client.get("/v1/nothing-here"), 404)
    assert_error_json(client.get("/v1/query"), 405)


FILTERS_CHROMA_REFUSES = [
    b'{"query": "vacation", "filters": {"page": {"$in": [1, "2"]}}}',
    b'{"query": "vacation", "filters": {"page": Infinity}}',
    b'{"query": "vacation", "filters": {"#document": "x"}}',
]


@pytest.mark.parametrize("raw", FILTERS_CHROMA_REFUSES, ids=["mixed-type-in", "infinity", "hash-key"])
def test_filters_chroma_refuses_are_client_errors(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/retrieve", content=raw, headers={"content-type": "application/json"})
    assert_error_json(response, 422)


@pytest.mark.parametrize("raw", FILTERS_CHROMA_REFUSES, ids=["mixed-type-in", "infinity", "hash-key"])
def test_an_internal_error_leaks_no_traceback(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/retrieve", content=raw, headers={"content-type": "application/json", "X-Request-ID": "err-1"})
    assert response.status_code >= 400
    body = assert_error_json(response, response.status_code)
    assert "chroma" not in response.text.lower() and "ValueError" not in response.text
    assert body["request_id"] == "err-1" == response.headers["X-Request-ID"]


# -- OpenAPI --------------------------------------------------------------------------------------
def test_openapi_schema_lists_the_routes_and_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/query", "/v1/retrieve", "/health"} <= set(schema["paths"])
    assert "post" in schema["paths"]["/v1/query"] and "post" in schema["paths"]["/v1/retrieve"]
    assert "get" in schema["paths"]["/health"]
    query = schema["components"]["schemas"]["QueryRequest"]["properties"]
    assert query["question"]["maxLength"] == MAX_QUESTION_CHARS
    assert (query["top_k"]["minimum"], query["top_k"]["maximum"]) == (1, 20)
    retrieve = schema["components"]["schemas"]["RetrieveRequest"]["properties"]
    assert retrieve["top_k"]["maximum"] == 100
    assert "text/event-stream" in schema["paths"]["/v1/query"]["post"]["responses"]["200"]["content"]


# -- before any ingest ----------------------------------------------------------------------------
@pytest.fixture
def empty_client(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = create_local_app(settings_for(clean_rag_env / "empty-index"))
    return TestClient(app, raise_server_exceptions=False)


def test_an_app_without_an_index_starts_and_reports_unhealthy(empty_client: TestClient) -> None:
    response = empty_client.get("/health")
    assert response.status_code == 503
    health = response.json()
    assert health["status"] == "unhealthy"
    assert any(reason.startswith("index:") and "ingest" in reason for reason in health["reasons"])
    assert (health["chunks_indexed"], health["index_version"], health["last_indexed_at"]) == (0, None, None)
    assert health["reranker"] == "fallback:retrieval-order" and health["generator"] == "extractive"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/query", {"question": "How many vacation days?"}),
        ("/v1/query", {"question": "How many vacation days?", "stream": True}),
        ("/v1/retrieve", {"query": "vacation"}),
        ("/v1/retrieve", {"query": "vacation", "mode": "lexical"}),
    ],
)
def test_queries_without_an_index_are_503_with_retry_after(empty_client: TestClient, path: str, body: dict) -> None:
    response = empty_client.post(path, json=body, headers={"X-Request-ID": "early-1"})
    error = assert_error_json(response, 503)
    assert "index" in error["error"] and "ingest" in error["error"]
    assert int(response.headers["Retry-After"]) > 0
    assert error["request_id"] == "early-1"
