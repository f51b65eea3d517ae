"""An ingest job beside a serving graph on a cluster of exactly 2 CPUs, as `serve run
configs/serve.yaml` makes one on a 2-core machine: the graph reserves 1.5 CPUs at its minimum
replicas, and `ray job submit ... ingest_jobs.index` must still run in the 0.5 left (it used to
wait forever for `{'CPU': 1.0}`), while the graph keeps answering. And when nothing at all is
free, or the job asks for more than is free, it fails in bounded time with the reason.

Its own cluster (`ray start --head --num-cpus 2`), not the shared 6-CPU session: the point is
the 2 CPUs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest_jobs.pipeline import MIN_CPU_SHARE
from rag_core.index_store import VersionedIndex
from tests.conftest import REPO_ROOT, SAMPLES_DIR, SHARED_DATA
from tests.integration.conftest import submit_ingest_job
from tests.local_cluster import LocalRayCluster, free_port, ray_env

PDFS = ["pypdf-samples__pdflatex-4-pages.pdf", "unstructured__multi-column-2p.pdf", "docling__multi_page.pdf"]
SMALL_FILES = 30  # SciFact abstracts, one .txt each: they share parse blocks
SERVE_CPUS = 1.5  # the graph at minimum replicas (serve_app/deployments.py, configs/serve.yaml)


def run_driver(cluster: LocalRayCluster, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A driver script against `cluster` (the pytest process may be in another Ray session)."""
    env = {**ray_env(), "RAY_ADDRESS": cluster.gcs_address}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_cpus():
    # Ray's socket paths must stay short (AF_UNIX limit): its temp dir is not under pytest's.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rbs", dir="/tmp"))
    cluster = LocalRayCluster(workers=0, head_cpus=2)  # `ray start --head --num-cpus 2`
    try:
        cluster.start(ray_tmp)
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"2-CPU Ray cluster did not start: {exc}")
    yield cluster
    cluster.stop()
    shutil.rmtree(ray_tmp, ignore_errors=True)


DEPLOY = """
import json, sys
import ray
from ray import serve
from rag_core.settings import load_settings
from serve_app.app import build_graph

index_dir, port = sys.argv[1], int(sys.argv[2])
ray.init(configure_logging=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
settings = load_settings("configs/rag.yaml", index_dir=index_dir, auth={"rate_limit_enabled": False})
serve.run(build_graph(settings), name="rag", route_prefix="/")
print(json.dumps({"free": ray.available_resources().get("CPU", 0.0), "total": ray.cluster_resources().get("CPU", 0.0)}))
"""


@pytest.fixture(scope="module")
def serving(two_cpus, tmp_path_factory) -> dict[str, Any]:
    """The real graph (configs/rag.yaml) deployed on the 2-CPU cluster over a not yet built index."""
    index_dir = tmp_path_factory.mktemp("beside-serving") / "index"
    port = free_port()
    env = {**ray_env(), "RAY_ADDRESS": two_cpus.gcs_address}
    done = subprocess.run(
        [sys.executable, "-c", DEPLOY, str(index_dir), str(port)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    cpus = json.loads(done.stdout.strip().splitlines()[-1])
    return {"url": f"http://127.0.0.1:{port}", "index_dir": index_dir, "cpus": cpus}


def job_env(index_dir: Path, **settings: str) -> dict[str, str]:
    # OCR is left on; none of these files needs it.
    return {"RAG_INDEX_DIR": str(index_dir), "RAG_CONFIG": str(REPO_ROOT / "configs" / "rag.yaml"), **settings}


def error_line(process: subprocess.CompletedProcess) -> dict[str, Any]:
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith('{"error"')]
    assert lines, process.stdout[-3000:] + process.stderr[-2000:]
    return lines[-1]


def retrieve(url: str, query: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/v1/retrieve", json={"query": query, "top_k": 3}, timeout=timeout)


def wait_for_version(url: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = retrieve(url, "vacation days")
            if response.status_code == 200 and response.json()["index_version"] == version:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"the graph did not serve {version} within {timeout_s} s")


def assert_fits_beside_the_graph(summary: dict[str, Any]) -> None:
    r = summary["resources"]
    assert r["cpus_total"] == 2.0
    assert r["cpus_free"] <= 2.0 - SERVE_CPUS + 1e-6, r  # the graph's 1.5 CPUs are not counted as free
    assert r["parse_concurrency"] <= 2, r  # the machine's cores, at most
    assert MIN_CPU_SHARE <= r["parse_num_cpus"] and MIN_CPU_SHARE <= r["embed_num_cpus"], r
    assert r["parse_num_cpus"] * r["parse_concurrency"] + r["embed_num_cpus"] <= r["cpus_free"] + 1e-6, r


@pytest.fixture(scope="module")
def first_version(two_cpus, serving) -> dict[str, Any]:
    """samples/ indexed by `ray job submit` while the graph holds its 1.5 CPUs."""
    assert serving["cpus"]["total"] == 2.0 and serving["cpus"]["free"] <= 2.0 - SERVE_CPUS + 1e-6, serving["cpus"]
    started = time.monotonic()
    process, summary = submit_ingest_job(two_cpus, "samples", job_env(serving["index_dir"]))
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert time.monotonic() - started < 300
    assert summary["files_indexed"] == 4 and summary["files_failed"] == [], summary
    assert_fits_beside_the_graph(summary)
    wait_for_version(serving["url"], summary["index_version"])
    return summary


def test_reingest_runs_beside_the_graph_and_the_graph_keeps_answering(two_cpus, serving, first_version, tmp_path):
    url = serving["url"]
    source = tmp_path / "docs"
    shutil.copytree(SAMPLES_DIR, source)
    for name in PDFS:
        shutil.copy(SHARED_DATA / "pdfs" / name, source / name)
    abstracts = (SHARED_DATA / "beir" / "scifact" / "corpus.jsonl").read_text().splitlines()[:SMALL_FILES]
    for line in abstracts:
        doc = json.loads(line)
        (source / f"scifact-{doc['_id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n")

    statuses: list[int] = []
    latencies: list[float] = []
    stop = threading.Event()

    def ask() -> None:  # one client, back to back, for as long as the job runs
        while not stop.is_set():
            began = time.perf_counter()
            try:
                statuses.append(retrieve(url, "How many paid vacation days does an employee get per year?").status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            latencies.append(time.perf_counter() - began)

    client = threading.Thread(target=ask, daemon=True)
    client.start()
    try:
        # The same source as the first version (samples/, now with more files): its 4 files are unchanged.
        process, summary = submit_ingest_job(two_cpus, str(source), job_env(serving["index_dir"]), "--source-name", "samples")
    finally:
        stop.set()
        client.join(timeout=60)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    files = 4 + len(PDFS) + SMALL_FILES
    assert summary["files_seen"] == files and summary["files_failed"] == [], summary
    assert summary["files_indexed"] == len(PDFS) + SMALL_FILES and summary["files_unchanged"] == 4
    assert_fits_beside_the_graph(summary)
    # Small files share parse tasks: fewer blocks than files, each file parsed exactly once.
    assert summary["resources"]["blocks"] < summary["files_indexed"]
    assert sum(summary["parse_nodes"].values()) == summary["files_indexed"]
    assert VersionedIndex(serving["index_dir"]).manifest(summary["index_version"]).chunk_count == summary["chunks_total"]

    # The graph answered every query while the job ran, and serves the new version after it.
    assert len(statuses) >= 5 and set(statuses) == {200}, statuses
    wait_for_version(url, summary["index_version"])
    hits = retrieve(url, "Dense Passage Retrieval for open-domain question answering").json()["results"]
    assert any(hit["file"] == "unstructured__multi-column-2p.pdf" for hit in hits), hits
    abstract = json.loads(abstracts[7])
    hits = retrieve(url, abstract["title"]).json()["results"]
    assert hits[0]["file"] == f"scifact-{abstract['_id']}.txt", hits


HOLD = """
import json, sys
import ray

ray.init(configure_logging=False, log_to_driver=False)

@ray.remote
class Placeholder:
    def ready(self):
        return True

free = ray.available_resources().get("CPU", 0.0)
holder = Placeholder.options(name="cpu-placeholder", namespace="beside-serving", lifetime="detached", num_cpus=free).remote()
ray.get(holder.ready.remote(), timeout=120)
print(json.dumps({"held": free, "free": ray.available_resources().get("CPU", 0.0)}))
"""

RELEASE = """
import ray

ray.init(configure_logging=False, log_to_driver=False)
ray.kill(ray.get_actor("cpu-placeholder", namespace="beside-serving"))
"""


def test_no_cpu_left_fails_fast_with_the_reason(two_cpus, serving, first_version):
    """Every CPU held (the graph's 1.5 and a placeholder actor on the rest): the job fails at once."""
    current = VersionedIndex(serving["index_dir"]).current_version()
    held = json.loads(run_driver(two_cpus, HOLD).stdout.strip().splitlines()[-1])
    assert held["held"] > 0 and held["free"] < MIN_CPU_SHARE, held
    try:
        started = time.monotonic()
        process, _ = submit_ingest_job(two_cpus, "samples", job_env(serving["index_dir"]), "--full")
        took = time.monotonic() - started
    finally:
        run_driver(two_cpus, RELEASE)
    assert process.returncode != 0
    error = error_line(process)
    assert "no CPU to spare for the ingest" in error["error"] and f"at least {MIN_CPU_SHARE} CPU" in error["error"], error
    assert error["index_version"] == current  # nothing changed
    assert took < 120, took
    assert VersionedIndex(serving["index_dir"]).current_version() == current


def test_requests_above_what_is_free_fail_after_the_stall_timeout_naming_the_demand(two_cpus, serving, first_version):
    """Explicit requests are used as given, so 1 CPU per parse task waits behind the graph; the
    stall guard ends that wait after ingest.stall_timeout_s with the pending demand named."""
    current = VersionedIndex(serving["index_dir"]).current_version()
    settings = {"RAG_INGEST__PARSE_NUM_CPUS": "1", "RAG_INGEST__EMBED_NUM_CPUS": "0.1", "RAG_INGEST__STALL_TIMEOUT_S": "15"}
    started = time.monotonic()
    process, _ = submit_ingest_job(two_cpus, "samples", job_env(serving["index_dir"], **settings), "--full")
    took = time.monotonic() - started
    assert process.returncode != 0
    error = error_line(process)["error"]
    assert error.startswith("IngestStalled: no progress for") and "{'CPU': 1.0} (parse tasks) pending" in error, error
    assert "CPUs free" in error and "ingest.stall_timeout_s" in error
    assert took < 120, took
    assert error_line(process)["index_version"] == current
    assert VersionedIndex(serving["index_dir"]).current_version() == current
    # The graph still answers.
    assert retrieve(serving["url"], "vacation days").status_code == 200
