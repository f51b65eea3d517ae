"""The document path under faults: the Ray dashboard's job API is down when an upload arrives
(a relay in front of it, taken down and brought back). The upload is accepted and kept, its run
is retried, and it is indexed once the job API is back: never lost."""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import httpx
import pytest

from rag_core.settings import load_settings
from serve_app.auth import hash_key
from tests.conftest import REPO_ROOT
from tests.fault_harness import ARTIFACTS, wait_until
from tests.integration.conftest import SECRET, UPLOAD_KEYS, bearer
from tests.integration.test_documents_api import retrieved_files, wait_for_job, wait_for_version
from tests.integration.test_serve_app import wait_for
from tests.tcp_relay import TCPRelay

pytestmark = pytest.mark.timeout(600)


def test_an_upload_while_the_job_api_is_down_is_kept_retried_and_indexed(samples_index, ray_cluster, serve_http):
    import ray
    from ray import serve

    from serve_app.app import build_graph
    from serve_app.documents.actor import NAMESPACE, registry_actor_name

    dashboard = urlparse(ray_cluster.dashboard_url)
    relay = TCPRelay(dashboard.hostname, dashboard.port).up()
    keys = [{"name": name, "sha256": hash_key(SECRET[name]), **spec} for name, spec in UPLOAD_KEYS.items()]
    index_dir = samples_index.index_dir  # this test's own copy
    settings = load_settings(
        REPO_ROOT / "configs/rag.yaml",
        index_dir=index_dir,
        auth={"keys": keys, "rate_limit_enabled": False},
        retrieval={"reload_check_interval_s": 0.5},
        documents={"batch_wait_s": 0.5, "poll_interval_s": 0.5, "retry_after_s": 2.0, "ray_dashboard": relay.url},
    )
    serve.run(build_graph(settings), name="docfaults", route_prefix="/docfaults")
    base = f"{serve_http}/docfaults"
    try:
        wait_for(f"{base}/health")
        relay.down()
        note = "Acme depot memo: the forklift battery room reopens on the fourth of May.\n"
        accepted = httpx.post(f"{base}/v1/documents", headers=bearer("acme"), files=[("files", ("depot-memo.txt", note))], timeout=60)
        assert accepted.status_code == 202, accepted.text
        job_id, doc_id = accepted.json()["job_id"], accepted.json()["documents"][0]["id"]
        down_at = time.monotonic()
        time.sleep(6)  # several refused submissions, each retried after retry_after_s
        job = httpx.get(f"{base}/v1/ingest/jobs/{job_id}", headers=bearer("acme"), timeout=30).json()
        assert job["status"] in ("queued", "pending", "retrying"), job
        document = httpx.get(f"{base}/v1/documents/{doc_id}", headers=bearer("acme"), timeout=30).json()
        assert document["status"] == "pending", document
        relay.up()
        up_at = time.monotonic()
        job = wait_for_job(base, "acme", job_id, timeout_s=300)
        indexed_after_s = time.monotonic() - up_at
        assert job["status"] == "succeeded" and job["summary"]["files_indexed"] == 1, job
        wait_for_version(base, job["summary"]["index_version"])
        wait_until(lambda: "acme/depot-memo.txt" in retrieved_files(base, "acme", "When does the forklift battery room reopen?", 3)[0], 30)
    finally:
        serve.delete("docfaults")
        relay.down()
        try:
            ray.kill(ray.get_actor(registry_actor_name(settings), namespace=NAMESPACE))
        except ValueError:
            pass
    figures = {
        "fault": "Ray job API unreachable during an upload",
        "job_api_down_s": round(up_at - down_at, 1),
        "indexed_after_job_api_back_s": round(indexed_after_s, 1),
        "uploads_lost": 0,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "job-api-down-during-upload.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfault report job-api-down-during-upload: {json.dumps(figures)}")
