"""Observability without Ray: the faithfulness estimate, what QueryService records per query (a
recording QueryMetrics), the JSON query log line, /health's stale-index state, and the alert rules
and dashboard in configs/monitoring (promtool, installed by scripts/ensure_promtool.sh)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from index_builder import build_version

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex
from rag_core.logs import JsonFormatter
from serve_app.faithfulness import answer_sentences, supported_share
from serve_app.local import create_local_app
from tests.conftest import REPO_ROOT
from tests.unit.test_serve_api import CORPUS, clean_environment, settings_for

MONITORING = REPO_ROOT / "configs" / "monitoring"
QUERY_LOG_FIELDS = {
    "request_id",
    "question_chars",
    "tenant",
    "latency_ms",
    "stages_ms",
    "chunks_retrieved",
    "cached",
    "cache",
    "answer_chars",
    "sources",
    "mode",
    "index_version",
    "error",
}


# -- faithfulness ---------------------------------------------------------------------------------


def test_answer_sentences_drop_citations_and_fragments() -> None:
    assert answer_sentences("Employees get 25 days [1]. Yes. Requests need approval two weeks ahead [2, 3].") == [
        "Employees get 25 days.",
        "Requests need approval two weeks ahead.",
    ]


def test_supported_share_with_the_real_model() -> None:
    model = EmbeddingModel.from_setting("auto", device="cpu")
    passages = model.embed_queries(["Employees receive 25 vacation days per year.", "The kitchen is cleaned every Friday."])
    answer = model.embed_queries(["Employees receive 25 vacation days per year.", "The Eiffel Tower is in Paris and opened in 1889."])
    assert supported_share(answer, passages, 0.35) == 0.5
    assert supported_share(answer[:1], passages, 0.35) == 1.0
    assert supported_share([], passages, 0.35) is None


# -- what a query records -------------------------------------------------------------------------


class RecordingMetrics:
    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.stages: Counter = Counter()
        self.scores: list[float] = []

    def request(self, route: str, status: int) -> None:
        self.calls[("request", route, status)] += 1

    def stage_seconds(self, stage: str, seconds: float) -> None:
        assert 0 <= seconds < 60
        self.stages[stage] += 1

    def cache(self, outcome: str) -> None:
        self.calls[("cache", outcome)] += 1

    def llm(self, event: str) -> None:
        self.calls[("llm", event)] += 1

    def load_shed(self, reason: str) -> None:
        self.calls[("shed", reason)] += 1

    def top_score(self, score: float) -> None:
        self.scores.append(score)

    def faithfulness(self, share: float) -> None:
        self.calls[("faithfulness",)] += 1


@pytest.fixture()
def observed_app(tmp_path, monkeypatch):
    clean_environment(monkeypatch, tmp_path)
    build_version(VersionedIndex(tmp_path / "index"), EmbeddingModel.from_setting("auto", device="cpu"), CORPUS)
    app = create_local_app(settings_for(tmp_path / "index"))
    metrics = RecordingMetrics()
    app.state.metrics = app.state.service.metrics = metrics
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, metrics, tmp_path / "index"


def test_each_query_records_stages_cache_outcome_top_score_and_route(observed_app) -> None:
    client, metrics, _ = observed_app
    for _ in range(2):
        assert client.post("/v1/query", json={"question": "How many vacation days do employees receive?"}).status_code == 200
    assert client.post("/v1/query", json={"question": ""}).status_code == 422
    assert client.get("/no/such/route").status_code == 404
    assert metrics.calls[("request", "/v1/query", 200)] == 2 and metrics.calls[("request", "/v1/query", 422)] == 1
    assert metrics.calls[("request", "unmatched", 404)] == 1  # raw paths never become labels
    assert metrics.calls[("cache", "miss")] == 1 and metrics.calls[("cache", "exact")] == 1
    assert metrics.stages["total"] == 2 and metrics.stages["cache"] == 2
    assert metrics.stages["embed"] == 1 and metrics.stages["retrieve"] == 1 and metrics.stages["generate"] == 1
    assert len(metrics.scores) == 1 and 0 < metrics.scores[0] <= 1.0


def test_each_query_logs_one_json_line_with_every_field(observed_app, caplog) -> None:
    client, _, _ = observed_app
    caplog.set_level(logging.INFO, logger="serve_app.query")
    client.post("/v1/query", json={"question": "How many vacation days do employees receive?"}, headers={"X-Request-ID": "log-1"})
    client.post("/v1/query", json={"question": "x", "filters": {"page": {"$in": [1, "a"]}}})  # refused at validation: no query line
    records = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "serve_app.query"]
    assert len(records) == 1
    line = records[0]
    assert QUERY_LOG_FIELDS <= set(line) and line["msg"] == "query" and line["request_id"] == "log-1"
    assert line["error"] is None and line["cached"] is False and line["chunks_retrieved"] == 5
    assert {"embed", "retrieve", "generate", "total"} <= set(line["stages_ms"])
    assert "question" not in line


def test_a_failing_query_is_logged_with_its_error(tmp_path, monkeypatch, caplog) -> None:
    clean_environment(monkeypatch, tmp_path)
    client = TestClient(create_local_app(settings_for(tmp_path / "no-index")), raise_server_exceptions=False)
    caplog.set_level(logging.INFO, logger="serve_app.query")
    assert client.post("/v1/query", json={"question": "anything?"}).status_code == 503
    line = json.loads(JsonFormatter().format(next(r for r in caplog.records if r.name == "serve_app.query")))
    assert line["error"].startswith("ServiceUnavailable") and line["mode"] is None


def test_health_is_degraded_when_no_ingest_succeeded_for_too_long(observed_app) -> None:
    client, _, index_dir = observed_app
    assert client.get("/health").json()["status"] == "healthy"
    finished = (datetime.now(timezone.utc) - timedelta(days=9)).isoformat()
    VersionedIndex(index_dir).audit.append(
        {
            "event": "ingest",
            "status": "completed",
            "finished_at": finished,
            "summary": {"chunks_added": 7, "duration_s": 2.0},
            "files": [{"file": "a", "action": "added"}],
        }
    )
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert any(reason.startswith("index stale") for reason in health.json()["reasons"])


# -- alert rules and dashboard --------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool") or str(REPO_ROOT / ".venv/bin/promtool")
    assert os.access(found, os.X_OK), "promtool missing: run scripts/ensure_promtool.sh"
    return found


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", "rag-alerts.yaml"], cwd=MONITORING, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([promtool(), "test", "rules", "rag-alerts.test.yaml"], cwd=MONITORING, capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_dashboard_and_rules_use_only_metrics_the_service_exports() -> None:
    source = (REPO_ROOT / "serve_app" / "metrics.py").read_text()
    defined = set(re.findall(r'"(rag_[a-z_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(rag_[a-z_]+)"', source))
    exported = {f"ray_{name}" for name in defined} | {f"ray_{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}
    dashboard = json.loads((MONITORING / "rag-grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += re.findall(r"expr: \|?\s*\n?\s*(.+)", (MONITORING / "rag-alerts.yaml").read_text())
    used = set(re.findall(r"\b(ray_rag_[a-z_]+)", "\n".join(expressions)))
    assert used and used <= exported, used - exported
    assert len(dashboard["panels"]) >= 8
