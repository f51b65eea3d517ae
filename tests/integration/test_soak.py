"""The soak's CI variant (`python -m benchmarks.soak` runs it for 20 minutes): 2 minutes of mixed load on the
graph with Redis (answers, cache hits, retrievals), a re-ingest every 50 s, every replica's memory
and file descriptors and Redis's connections sampled. Zero 5xx; nothing grows."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tests.fault_harness import ARTIFACTS
from tests.integration.conftest import ingest_env
from tests.integration.test_serve_app import wait_for
from tests.redis_server import SHARED_REDIS_URL, unique_prefix
from tests.soak import Soak, cli_reingest

pytestmark = pytest.mark.timeout(600)


def test_two_minutes_of_mixed_load_and_reingests_leave_no_errors_and_no_growth(samples_index, ray_cluster, deploy_app):
    base = deploy_app(
        "soak",
        index_dir=samples_index.index_dir,
        redis_url=SHARED_REDIS_URL,
        cache={"key_prefix": unique_prefix("soak")},
        retrieval={"reload_check_interval_s": 1.0},
    )
    wait_for(f"{base}/health")
    reingest = cli_reingest(samples_index.source, samples_index.index_dir, ingest_env(samples_index.index_dir, ray_cluster))
    report = Soak(base, "soak", duration_s=120, reingest=reingest, reingest_every_s=50, redis_url=SHARED_REDIS_URL).run()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "soak-2min.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"\nsoak report: {json.dumps(asdict(report))}")

    assert report.server_errors == 0, report.notes
    assert report.requests > 200 and report.statuses.get("200", 0) == report.requests
    assert [r["returncode"] for r in report.reingests] == [0, 0], report.reingests
    assert [r["index_version"] for r in report.reingests] == ["v000002", "v000003"]
    deployments = {r["deployment"] for r in report.replicas}
    assert {"Ingress", "Embedder", "Retriever"} <= deployments, report.replicas
    for replica in report.replicas:
        assert replica["rss_end_mb"] is not None, f"replica {replica} was replaced mid-soak"
        assert replica["rss_growth_pct"] <= 10, replica
        assert replica["fds_end"] <= replica["fds_start"] + 8, replica
    assert report.redis_clients_end <= report.redis_clients_start + 4, (report.redis_clients_start, report.redis_clients_end)
