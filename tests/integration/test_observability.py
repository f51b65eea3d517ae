"""Metrics on the shared Ray cluster's Prometheus endpoint (started with a metrics export port, as
`ray start --metrics-export-port` does) and the JSON query log, after real queries and a real ingest."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import run_ingest
from tests.integration.test_serve_app import wait_for

APP = "observed"  # metrics are filtered to this app: other tests' apps export the same names
QUERY_LOG_FIELDS = {
    "request_id",
    "question_chars",
    "stages_ms",
    "chunks_retrieved",
    "cached",
    "cache",
    "answer_chars",
    "sources",
    "mode",
    "index_version",
    "error",
    "tenant",
}


def scrape(url: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} for the rag metrics."""
    samples = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith("ray_rag_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], metric: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if (k == metric or k.startswith(metric + "{")) and all(w in k for w in wanted))


@pytest.fixture(scope="module")
def observed(tmp_path_factory, ray_cluster, serve_http, samples_index_template):
    """A graph over samples/ after a second (changing) ingest and a batch of queries; yields
    (base url, ingest summary, metrics url)."""
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph
    from tests.conftest import REPO_ROOT

    root = tmp_path_factory.mktemp("observed")
    shutil.copytree(samples_index_template.source, root / "docs")
    shutil.copytree(samples_index_template.index_dir, root / "index", ignore=shutil.ignore_patterns("ingest.lock*"))
    settings = load_settings(
        REPO_ROOT / "configs/rag.yaml",
        index_dir=root / "index",
        auth={"rate_limit_enabled": False},
        retrieval={"reload_check_interval_s": 0.5},
    )
    serve.run(build_graph(settings), name=APP, route_prefix=f"/{APP}")
    base = f"{serve_http}/{APP}"
    wait_for(f"{base}/health")
    (root / "docs/heron.txt").write_text("Project Heron studies river birds; its field station opens in May.\n")
    second = run_ingest(root / "index", ray_cluster, "--source", str(root / "docs"))
    assert second.returncode == 0 and second.summary["index_version"] == "v000002"
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/health").json()["index_version"] != "v000002" and time.monotonic() < deadline:
        time.sleep(0.5)
    with httpx.Client(timeout=60) as client:
        for question in ["How many vacation days do employees get?", "When does the Heron field station open?"] * 3:
            assert client.post(f"{base}/v1/query", json={"question": question}).status_code == 200
        assert client.post(f"{base}/v1/query", json={"question": ""}).status_code == 422
    yield base, second.summary, ray_cluster.metrics_url
    serve.delete(APP)


def test_rag_metrics_reach_the_prometheus_endpoint_with_plausible_values(observed) -> None:
    base, summary, metrics_url = observed
    deadline = time.monotonic() + 90  # Ray exports user metrics every few seconds
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        samples = scrape(metrics_url)
        if (
            total(samples, "ray_rag_requests_total", application=APP, route="/v1/query", status="200") >= 6
            and total(samples, "ray_rag_index_version", application=APP) >= 2
            and total(samples, "ray_rag_ingest_last_run_chunks", application=APP) > 0
        ):
            break
        time.sleep(2)
    assert total(samples, "ray_rag_requests_total", application=APP, route="/v1/query", status="200") >= 6, sorted(samples)[:40]
    assert total(samples, "ray_rag_requests_total", application=APP, route="/v1/query", status="422") >= 1
    # Latency per stage: every fresh answer was embedded, retrieved and generated; hits only touched the cache.
    for stage in ("cache", "embed", "retrieve", "generate", "total"):
        assert total(samples, "ray_rag_stage_latency_seconds_count", application=APP, stage=stage) >= 2, stage
    assert total(samples, "ray_rag_stage_latency_seconds_count", application=APP, stage="total") >= 6
    assert total(samples, "ray_rag_cache_lookups_total", application=APP, outcome="miss") >= 2
    assert total(samples, "ray_rag_cache_lookups_total", application=APP, outcome="exact") >= 4
    assert total(samples, "ray_rag_retrieval_top_score_count", application=APP) >= 2
    assert total(samples, "ray_rag_index_version", application=APP) >= 2
    assert total(samples, "ray_rag_index_chunks", application=APP) >= summary["chunks_total"]
    assert 0 <= total(samples, "ray_rag_ingest_last_success_age_seconds", application=APP) < 600
    assert total(samples, "ray_rag_ingest_last_run_files", application=APP, action="added") >= 1
    assert total(samples, "ray_rag_ingest_last_run_chunks", application=APP) >= summary["chunks_added"]
    assert total(samples, "ray_rag_ingest_last_run_chunks_per_second", application=APP) > 0
    mean_latency = total(samples, "ray_rag_stage_latency_seconds_sum", application=APP, stage="total") / total(
        samples, "ray_rag_stage_latency_seconds_count", application=APP, stage="total"
    )
    assert 0 < mean_latency < 30


def test_every_query_writes_one_json_log_line_with_every_field(observed, ray_cluster) -> None:
    logs = Path(ray_cluster.session_dir) / "logs"
    deadline = time.monotonic() + 30
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = []
        for path in logs.glob("worker-*.err"):
            for line in path.read_text(errors="replace").splitlines():
                start = line.find('{"ts"')
                if start >= 0 and '"msg": "query"' in line:
                    lines.append(json.loads(line[start:]))
        if len(lines) >= 6:
            break
        time.sleep(1)
    assert len(lines) >= 6, len(lines)  # six queries; the 422 never reached the service
    for record in lines:
        assert QUERY_LOG_FIELDS <= set(record), set(record) ^ QUERY_LOG_FIELDS
        assert "question" not in record  # question text only when api.log_questions is on
    ok = [r for r in lines if r["error"] is None]
    failed = [r for r in lines if r["error"]]
    assert any(r["cached"] for r in ok) and any(not r["cached"] for r in ok)
    assert all(re.fullmatch(r"[0-9a-f]{32}|[A-Za-z0-9._:\-]+", r["request_id"]) for r in lines)
    fresh = next(r for r in ok if not r["cached"])
    assert {"embed", "retrieve", "generate", "total"} <= set(fresh["stages_ms"]) and fresh["chunks_retrieved"] >= 1
    assert failed == [] or all(isinstance(r["error"], str) for r in failed)
