"""Fuzzing the HTTP API with schemathesis against the app's own OpenAPI schema: valid and invalid
requests (positive and negative generation) for every operation, with a valid API key. Every
response must be a non-5xx that matches its documented schema, status code and content type, and
invalid requests must be rejected. Not checked: that every schema-valid request is accepted; the
schema types `filters` as any object, while the server also enforces the filter grammar, depth and
size limits (those answers are documented 422s).

The counts (requests per operation and status) are written to $RAG_FUZZ_REPORT when set."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from index_builder import build_version
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex
from serve_app.auth import hash_key
from serve_app.local import create_local_app
from tests.unit.test_serve_api import CORPUS, clean_environment, settings_for

KEY = "rag_fuzz_key_0123456789abcdef0123456789"
MAX_EXAMPLES = 60
COUNTS: Counter = Counter()


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        workdir = tmp_path_factory.mktemp("fuzz")
        clean_environment(patch, workdir)
        build_version(VersionedIndex(workdir / "index"), EmbeddingModel.from_setting("auto", device="cpu"), CORPUS)
        settings = settings_for(workdir / "index")
        # Uploads the fuzzer gets accepted are staged, never indexed: runs are the integration tests' subject.
        settings.documents.batch_wait_s = 86_400
        settings.auth.keys = settings.auth.model_validate(
            {"keys": [{"name": "fuzz", "sha256": hash_key(KEY), "tenant": "default", "admin": True}]}
        ).keys
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_local_app(settings))
        # The key is ours; generated Authorization / X-API-Key values would only test the 401 path.
        schema.config.generation.update(with_security_parameters=False)
        yield schema
    report = os.environ.get("RAG_FUZZ_REPORT")
    if report:
        with open(report, "w") as handle:
            json.dump({f"{op} -> {status}": n for (op, status), n in sorted(COUNTS.items())}, handle, indent=1)


def reach_an_answer(case) -> None:
    """A schema-valid chat body is almost never answerable: its last message must be a non-blank
    user question for a listed model, which the schema cannot say. Keep everything generated and
    end the conversation with a question, so the valid cases fuzz the answering path too."""
    body = case.body
    first = body["messages"][0].get("content")
    question = first if isinstance(first, str) and first.strip() else "Where can I park my bicycle?"
    body["model"] = "rag"
    body["messages"].append({"role": "user", "content": question[:4000]})


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_5xx_and_every_response_matches_its_schema(api_schema, mode: GenerationMode) -> None:
    # call_and_validate runs every built-in check: no server error, status code, content type and
    # headers documented, body conforming to the response schema, invalid data rejected.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/query",
        "POST /v1/retrieve",
        "POST /v1/chat/completions",
        "GET /v1/models",
        "GET /health",
        "GET /health/live",
        "POST /v1/documents",
        "GET /v1/documents",
        "GET /v1/documents/{document_id}",
        "DELETE /v1/documents/{document_id}",
        "GET /v1/ingest/jobs/{job_id}",
        "GET /v1/index",
    }
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.path in ("/health", "/health/live", "/v1/models", "/v1/index"):
            continue  # they take no input that could be made invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            if mode == GenerationMode.POSITIVE and operation.path == "/v1/chat/completions":  # noqa: B023  (as below)
                reach_an_answer(case)
            response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance])
            COUNTS[(f"{mode.value} {operation.method.upper()} {operation.path}", response.status_code)] += 1  # noqa: B023  (fuzz() runs in this iteration)

        fuzz()
