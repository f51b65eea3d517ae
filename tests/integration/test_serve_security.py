"""Security against the running Serve graph: documents ingested by the real job with folder rules,
a sidecar and PII; API keys; tenants isolated through /v1/query, /v1/retrieve, streaming and the
Redis cache; one rate limit shared by two ingress replicas; refusing a public address without keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq
import pytest

from rag_core.index_store import VersionedIndex
from serve_app.auth import hash_key
from tests.conftest import REPO_ROOT
from tests.integration.conftest import run_ingest
from tests.integration.test_serve_app import wait_for
from tests.redis_server import SHARED_REDIS_URL, shared_redis, unique_prefix

DOCS = {
    "acme/vacation.md": "Acme employees receive 25 vacation days per year. Questions go to hr@acme.example.com or (212) 555-0187.",
    "acme/hr/salaries.md": "Acme salary bands: engineers earn between 90k and 140k. Payroll card 4111 1111 1111 1111, SSN 536-22-8171.",
    "globex/vacation.md": "Globex employees receive 18 vacation days per year.",
    "globex/parking.md": "Globex parking is free for employees in the north garage.",
}
PII_VALUES = ["hr@acme.example.com", "(212) 555-0187", "4111 1111 1111 1111", "536-22-8171"]
RULES = [{"prefix": "acme", "tenant": "acme"}, {"prefix": "globex", "tenant": "globex"}]
KEYS = {
    "acme-staff": {"tenant": "acme"},
    "acme-hr": {"tenant": "acme", "groups": ["hr"]},
    "globex-staff": {"tenant": "globex"},
    # One token a minute after the burst of 6: the 12 requests below see no refill unless they take over a minute.
    "limited": {"tenant": "globex", "rate_per_minute": 1, "burst": 6},
}
SECRET = {name: f"rag_it_{name}_fedcba9876543210" for name in KEYS}
ALLOWED = {
    "acme-staff": {"acme/vacation.md"},
    "acme-hr": {"acme/vacation.md", "acme/hr/salaries.md"},
    "globex-staff": {"globex/vacation.md", "globex/parking.md"},
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET[name]}"}


def files_of(body: dict) -> set[str]:
    return {s["file"] for s in body.get("sources", body.get("results", []))}


@pytest.fixture(scope="module")
def secured(tmp_path_factory, ray_cluster, serve_http):
    """(base URL, index dir, ingest summary) of a graph with keys, Redis and two ingress replicas."""
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph

    root = tmp_path_factory.mktemp("secured")
    for relative, text in DOCS.items():
        (root / "docs" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "docs" / relative).write_text(text + "\n")
    (root / "docs/acme/hr/salaries.md.meta.json").write_text(json.dumps({"groups": ["hr"], "department": "hr"}))
    result = run_ingest(root / "index", ray_cluster, "--source", str(root / "docs"), RAG_INGEST__ACCESS=json.dumps(RULES))
    assert result.returncode == 0, result.stderr[-2000:]

    prefix = unique_prefix("secured")
    keys = [{"name": name, "sha256": hash_key(SECRET[name]), **spec} for name, spec in KEYS.items()]
    settings = load_settings(
        REPO_ROOT / "configs/rag.yaml",
        index_dir=root / "index",
        redis_url=SHARED_REDIS_URL,
        cache={"key_prefix": prefix},
        auth={"keys": keys, "rate_limit_prefix": f"{prefix}:rl", "burst": 1000},
    )
    two_ingress = {"Ingress": {"num_replicas": 2, "autoscaling_config": None}}
    serve.run(build_graph(settings, two_ingress), name="secured", route_prefix="/secured")
    base = f"{serve_http}/secured"
    wait_for(f"{base}/health")
    yield base, root / "index", result.summary
    serve.delete("secured")
    redis = shared_redis()
    for key in redis.scan_iter(match=f"{prefix}:*"):
        redis.delete(key)


def test_without_a_key_every_route_but_health_is_401(secured) -> None:
    base, _, _ = secured
    assert httpx.post(f"{base}/v1/query", json={"question": "vacation?"}).status_code == 401
    assert httpx.post(f"{base}/v1/retrieve", json={"query": "vacation"}, headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200


@pytest.mark.parametrize("key", ALLOWED)
def test_no_tenant_receives_another_tenants_chunk(secured, key: str) -> None:
    base, _, _ = secured
    seen: set[str] = set()
    with httpx.Client(timeout=60, headers=bearer(key)) as client:
        for question in ("How many vacation days do employees receive?", "What are the salary bands?", "Where is parking?"):
            for mode in ("dense", "lexical", "hybrid"):
                seen |= files_of(client.post(f"{base}/v1/retrieve", json={"query": question, "top_k": 10, "mode": mode}).json())
            for _ in range(2):  # the second time from the cache
                seen |= files_of(client.post(f"{base}/v1/query", json={"question": question, "top_k": 10}).json())
            stream = client.post(f"{base}/v1/query", json={"question": question, "stream": True}).text
            done = json.loads(stream.rsplit("event: done\ndata: ", 1)[1])
            seen |= files_of(done)
            widened = client.post(
                f"{base}/v1/retrieve", json={"query": question, "filters": {"acl_tenant": {"$in": ["acme", "globex"]}}}
            ).json()
            seen |= files_of(widened)
    assert seen == ALLOWED[key]


def test_the_cache_never_answers_across_tenants(secured) -> None:
    base, _, _ = secured
    question = {"question": "How many vacation days does each employee receive per year?"}
    first = httpx.post(f"{base}/v1/query", json=question, headers=bearer("acme-staff"), timeout=60).json()
    again = httpx.post(f"{base}/v1/query", json=question, headers=bearer("acme-staff"), timeout=60).json()
    other = httpx.post(f"{base}/v1/query", json=question, headers=bearer("globex-staff"), timeout=60).json()
    assert "25 vacation days" in first["answer"] and again["cache"] == "exact"
    assert other["cached"] is False and "18 vacation days" in other["answer"] and "25" not in other["answer"]


def test_chat_completions_apply_the_keys_tenant_and_refuse_a_wrong_key(secured) -> None:
    base, _, _ = secured

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=60, max_retries=0)

    conversation = [
        {"role": "user", "content": "How many vacation days do employees receive per year?"},
        {"role": "assistant", "content": "They receive some [1]."},
        {"role": "user", "content": "And where is the parking?"},
    ]
    for name, days in (("acme-staff", "25"), ("globex-staff", "18")):
        first = client(SECRET[name]).chat.completions.create(model="rag", messages=conversation[:1])
        assert f"{days} vacation days" in first.choices[0].message.content
        follow_up = client(SECRET[name]).chat.completions.create(model="rag", messages=conversation)
        for completion in (first, follow_up):
            assert {s["file"] for s in completion.sources} <= ALLOWED[name], completion.sources
    # The tenant filter applies whatever the model, filters or stream ask for.
    widened = client(SECRET["acme-staff"]).chat.completions.create(
        model="rag", messages=conversation[:1], stream=True, extra_body={"filters": {"acl_tenant": "globex"}}
    )
    sources = [c.sources for c in widened if c.choices and c.choices[0].finish_reason][0]
    assert {s["file"] for s in sources} <= ALLOWED["acme-staff"]
    with pytest.raises(openai.AuthenticationError):
        client("rag_wrong_key_0123456789abcdef").chat.completions.create(model="rag", messages=conversation[:1])
    with pytest.raises(openai.AuthenticationError):
        client("rag_wrong_key_0123456789abcdef").models.list()


def test_pii_never_reaches_the_index_and_is_counted_in_the_audit(secured) -> None:
    base, index_dir, summary = secured
    assert summary["pii_redacted"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "US_SSN": 1}
    index = VersionedIndex(index_dir)
    version = index.current_version()
    stored = json.dumps(pq.read_table(index.parquet_dir(version)).select(["text", "metadata"]).to_pylist())
    collection_files = b"".join(p.read_bytes() for p in (index.versions_root / version).rglob("*") if p.is_file())
    for value in PII_VALUES:
        assert value not in stored and value.encode() not in collection_files
    assert "<CREDIT_CARD>" in stored and "<EMAIL_ADDRESS>" in stored
    audit = list(index.audit.records())[-1]
    by_file = {f["file"]: f.get("pii_redacted") for f in audit["files"]}
    assert by_file["acme/hr/salaries.md"] == {"CREDIT_CARD": 1, "US_SSN": 1}
    assert by_file["acme/vacation.md"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    hr = httpx.post(f"{base}/v1/retrieve", json={"query": "payroll card SSN"}, headers=bearer("acme-hr")).json()
    assert not any(value in r["text"] for r in hr["results"] for value in PII_VALUES)


def test_two_ingress_replicas_share_one_rate_limit(secured) -> None:
    base, _, _ = secured
    with httpx.Client(timeout=60, headers=bearer("limited")) as client:
        responses = [client.post(f"{base}/v1/retrieve", json={"query": f"parking {i}"}) for i in range(12)]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses  # per-replica buckets would allow up to 12
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["error"]


def test_serve_run_on_a_public_address_without_keys_refuses_to_start(tmp_path) -> None:
    """The app fails to build with the reason; Serve keeps `serve run` alive retrying, never serving."""
    import signal
    import time

    config = (REPO_ROOT / "configs/serve.yaml").read_text().replace("host: 127.0.0.1", "host: 0.0.0.0").replace("port: 8000", "port: 8011")
    (tmp_path / "serve.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "RAY_ADDRESS"))}
    env.update(RAG_INDEX_DIR=str(tmp_path / "index"), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    output = tmp_path / "serve-run.log"
    with output.open("w") as sink:
        process = subprocess.Popen(
            ["serve", "run", "-a", "local", str(tmp_path / "serve.yaml")],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "refusing to serve 0.0.0.0 without API keys" not in output.read_text() and time.monotonic() < deadline:
            assert process.poll() is None or "refusing" in output.read_text(), output.read_text()[-2000:]
            time.sleep(1)
        assert "refusing to serve 0.0.0.0 without API keys" in output.read_text(), output.read_text()[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get("http://127.0.0.1:8011/health", timeout=5).raise_for_status()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
