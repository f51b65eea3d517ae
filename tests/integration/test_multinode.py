"""The cluster path on one machine: a head and two worker nodes started with `ray start`, the
index in a ChromaDB server, Redis shared. The ingest job goes through `ray job submit`; the Serve
app is deployed with `serve deploy` and its replicas land on different nodes. No disk is shared
by design: the job's index_dir (the writer's state on the head) is never given to the replicas,
which are pointed at an empty folder and must serve from the Chroma server alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, SAMPLES_DIR
from tests.local_cluster import ChromaServer, LocalRayCluster, free_port, ingest_summary, local_serve_config
from tests.redis_server import SHARED_REDIS_URL, unique_prefix

# Real PDFs from the shared set (text layers of a few pages to a few dozen), plus the samples.
PDFS = [
    "unstructured__multi-column-2p.pdf",
    "unstructured__layout-parser-paper-fast.pdf",
    "unstructured__a1977-backus-p21.pdf",
    "pypdf-samples__multicolumn.pdf",
    "pypdf-samples__pdflatex-4-pages.pdf",
    "docling__multi_page.pdf",
    "docling__code_and_formula.pdf",
    "unstructured__reliance.pdf",
]


@dataclass
class MultiNode:
    ray: LocalRayCluster
    chroma: ChromaServer
    base: Path

    def submit_ingest(self, source: Path, **settings: str) -> dict[str, Any]:
        """`ray job submit ... -- python -m ingest_jobs.index --source DIR`; the job's summary."""
        env_vars = {
            "RAG_CONFIG": str(REPO_ROOT / "configs" / "rag.yaml"),
            "RAG_CHROMA_URL": self.chroma.url,
            "RAG_INDEX_DIR": str(self.base / "head-index"),  # the writer's own state, on the head
            "RAG_TRIGGERED_BY": "multinode-test",
            **settings,
        }
        done = self.ray.submit_ingest(source, env_vars)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = ingest_summary(done)
        assert summary, done.stdout[-3000:]
        return summary


@pytest.fixture(scope="module")
def multinode(tmp_path_factory) -> MultiNode:
    base = tmp_path_factory.mktemp("multinode")
    chroma = ChromaServer(base / "chroma").start()
    # Ray's socket paths must stay short (AF_UNIX limit): its temp dir is not under pytest's.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))
    cluster = LocalRayCluster(workers=2, worker_cpus=2)
    try:
        cluster.start(ray_tmp)
    except Exception as exc:
        cluster.stop()
        chroma.stop()
        pytest.fail(f"local multi-node cluster did not start: {exc}")
    yield MultiNode(cluster, chroma, base)
    cluster.stop()
    chroma.stop()
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(multinode, pdf_dir) -> Path:
    source = multinode.base / "docs"
    shutil.copytree(SAMPLES_DIR, source)
    for name in PDFS:
        shutil.copy(pdf_dir / name, source / name)
    return source


@pytest.fixture(scope="module")
def ingested(multinode, corpus) -> dict[str, Any]:
    return multinode.submit_ingest(corpus, RAG_INGEST__EMBED_ACTORS_MIN="2", RAG_INGEST__EMBED_ACTORS_MAX="2")


def test_three_nodes_with_distinct_resources(multinode):
    nodes = multinode.ray.nodes()
    assert len(nodes) == 3
    head = [n for n in nodes if n["is_head_node"]]
    assert len(head) == 1 and head[0]["resources_total"].get("CPU", 0) == 0
    workers = [n for n in nodes if not n["is_head_node"]]
    assert sorted(k for n in workers for k in n["resources_total"] if k.startswith("worker_")) == ["worker_0", "worker_1"]


def test_ingest_job_parses_and_embeds_on_more_than_one_node(multinode, ingested, corpus):
    workers = multinode.ray.worker_node_ids()
    files = len(list(corpus.iterdir()))
    assert ingested["files_indexed"] + len(ingested["files_failed"]) == files and ingested["chunks_added"] > 0
    # From the job's own records: which node parsed each file and embedded each chunk.
    assert set(ingested["parse_nodes"]) <= workers and len(ingested["parse_nodes"]) >= 2, ingested["parse_nodes"]
    assert set(ingested["embed_nodes"]) <= workers and len(ingested["embed_nodes"]) >= 2, ingested["embed_nodes"]
    assert sum(ingested["parse_nodes"].values()) == files
    assert sum(ingested["embed_nodes"].values()) == ingested["chunks_added"]
    # The same record is in the head's audit trail.
    audit = [json.loads(line) for line in (multinode.base / "head-index" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["triggered_by"] == "multinode-test" and audit[-1]["summary"]["embed_nodes"] == ingested["embed_nodes"]


def test_the_index_is_readable_from_the_server_alone(multinode, ingested, tmp_path):
    """A reader with an empty index_dir (another node's view) sees the version the job made."""
    from rag_core.index_store import VersionedIndex

    index = VersionedIndex(tmp_path / "empty", multinode.chroma.url)
    assert index.current_version() == ingested["index_version"]
    info = index.info(ingested["index_version"])
    assert info.chunks_total == ingested["chunks_total"] and info.store == multinode.chroma.url
    ids, texts, metadatas = index.chunk_rows(ingested["index_version"])
    assert len(set(ids)) == info.chunks_total and all(texts) and {m["index_version"] for m in metadatas} == {info.version}
    assert index.last_completed_ingest()["summary"]["chunks_added"] == ingested["chunks_added"]
    assert not (tmp_path / "empty").exists()


def serve_config(multinode: MultiNode, port: int, cache_prefix: str) -> dict[str, Any]:
    config = local_serve_config(
        port,
        {
            "chroma_url": multinode.chroma.url,
            "redis_url": SHARED_REDIS_URL,
            "cache.key_prefix": cache_prefix,
            "auth.rate_limit_enabled": "false",
            "index_dir": str(multinode.base / "replicas-never-read-this"),
        },
    )
    app = config["applications"][0]
    for deployment in app["deployments"]:
        spread = deployment["name"] in ("Ingress", "Embedder", "Retriever")
        deployment["ray_actor_options"] = {"num_cpus": 0.25}
        deployment["autoscaling_config"] = {"min_replicas": 2 if spread else 1, "max_replicas": 2 if spread else 1}
        deployment["max_replicas_per_node"] = 1
    return config


@pytest.fixture(scope="module")
def served(multinode, ingested) -> str:
    port = free_port()
    config_path = multinode.base / "serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config(multinode, port, unique_prefix("multinode"))))
    deployed = multinode.ray.ray("serve", "deploy", str(config_path), "--address", multinode.ray.dashboard_url)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    while True:
        status = multinode.ray.ray("serve", "status", "--address", multinode.ray.dashboard_url)
        state = yaml.safe_load(status.stdout or "{}") or {}
        app = (state.get("applications") or {}).get("rag", {})
        if app.get("status") == "RUNNING":
            break
        assert app.get("status") != "DEPLOY_FAILED", status.stdout[-3000:]
        assert time.monotonic() < deadline, status.stdout[-3000:]
        time.sleep(3)
    return url


def replica_nodes(multinode: MultiNode) -> dict[str, list[str]]:
    details = httpx.get(f"{multinode.ray.dashboard_url}/api/serve/applications/", timeout=30).json()
    deployments = details["applications"]["rag"]["deployments"]
    return {name: [r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING"] for name, d in deployments.items()}


def test_replicas_are_spread_over_worker_nodes(multinode, served):
    workers = multinode.ray.worker_node_ids()
    nodes = replica_nodes(multinode)
    for name in ("Ingress", "Embedder", "Retriever"):
        assert len(nodes[name]) == 2 and len(set(nodes[name])) == 2, (name, nodes[name])
        assert set(nodes[name]) <= workers


def test_queries_are_answered_from_the_shared_store_and_cache(multinode, ingested, served):
    health = httpx.get(f"{served}/health", timeout=30).json()
    assert health["index_version"] == ingested["index_version"] and health["chunks_indexed"] == ingested["chunks_total"]
    question = {"question": "How often are production passwords rotated?"}
    first = httpx.post(f"{served}/v1/query", json=question, timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["sources"][0]["file"] == "security-faq.txt"
    # Two ingress replicas on two nodes, one Redis: every repeat is a hit, whichever replica answers.
    repeats = [httpx.post(f"{served}/v1/query", json=question, timeout=60).json() for _ in range(8)]
    assert all(r["cached"] and r["cache"] == "exact" for r in repeats)
    assert {r["answer"] for r in repeats} == {first.json()["answer"]}
    assert not (multinode.base / "replicas-never-read-this").exists()  # nothing came from a local disk


def test_a_new_version_reaches_replicas_on_every_node(multinode, corpus, served):
    (corpus / "kestrel.txt").write_text("The kestrel bird survey team counts nests every Monday at 06:00.\n")
    summary = multinode.submit_ingest(corpus)
    assert summary["files_indexed"] == 1 and summary["new_version_created"]
    question = {"question": "When does the kestrel bird survey team count nests?", "use_cache": False}
    deadline = time.monotonic() + 60
    while True:  # each Retriever replica follows the pointer on the server, then swaps
        answers = [httpx.post(f"{served}/v1/query", json=question, timeout=60).json() for _ in range(6)]
        if all(a["index_version"] == summary["index_version"] for a in answers):
            break
        assert time.monotonic() < deadline, answers
        time.sleep(2)
    assert all(a["sources"][0]["file"] == "kestrel.txt" for a in answers)


# Last in this module on purpose: it takes a worker node away for good. 45 pages: enough for the job
# to be parsing and embedding on both workers when one is killed (its embedding actors alone take
# about 10 s to start), without a 117-page book the rerun then embeds on the one node left.
MORE_PDFS = [
    "unstructured__multi-column.pdf",
    "unstructured__fr_olap.pdf",
    "unstructured__layout-parser-paper-with-table.pdf",
    "docling__redp5110_sampled.pdf",
    "docling__amt_handbook_sample.pdf",
]


def test_a_worker_node_lost_mid_ingest_leaves_the_index_intact_and_a_rerun_completes(multinode, corpus, pdf_dir, served):
    """A worker node stops (its raylet and workers SIGKILLed) while the job parses and embeds.
    The job finishes on the remaining node or fails with a clear error; either way no partial
    version is ever current, and a rerun completes."""
    import os
    import signal
    import subprocess
    import threading

    from rag_core.index_store import VersionedIndex
    from tests.fault_harness import ARTIFACTS
    from tests.local_cluster import VENV_BIN, ray_env

    index = VersionedIndex(multinode.base / "reader", multinode.chroma.url)
    before = index.current_version()
    for name in MORE_PDFS:
        shutil.copy(pdf_dir / name, corpus / name)
    env_vars = {
        "RAG_CONFIG": str(REPO_ROOT / "configs" / "rag.yaml"),
        "RAG_CHROMA_URL": multinode.chroma.url,
        "RAG_INDEX_DIR": str(multinode.base / "head-index"),
        "RAG_INGEST__PROGRESS_INTERVAL_S": "0.5",
    }
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", multinode.ray.dashboard_url]
    command += ["--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", "python", "-m", "ingest_jobs.index"]
    started = time.monotonic()
    job = subprocess.Popen([*command, "--source", str(corpus)], env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    working = threading.Event()

    def watch() -> None:
        for line in job.stdout:
            lines.append(line)
            if '"pipeline resources"' in line:  # the Dataset is about to run its parse and embed work
                working.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert working.wait(timeout=300), "".join(lines[-40:])
    time.sleep(5)  # parse tasks and embedding actors at work on both worker nodes
    lost_node = multinode.ray.processes[-1]  # worker-1's `ray start --block`, leader of its process group
    killed_at = time.monotonic() - started
    os.killpg(lost_node.pid, signal.SIGKILL)
    lost_node.wait(timeout=30)
    returncode = job.wait(timeout=900)
    reader.join(timeout=30)
    job_s = time.monotonic() - started
    output = "".join(lines)
    summary = ingest_summary(subprocess.CompletedProcess(command, returncode, output, ""))
    failure = next((json.loads(line) for line in output.splitlines() if line.startswith('{"error"')), None)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "node-lost-mid-ingest.log").write_text(output)  # the job's own account, kept whatever the outcome

    current = index.current_version()
    if returncode == 0:  # finished on the remaining node
        assert summary and current == summary["index_version"] != before
    else:  # failed with its reason soon after the loss, the previous version still served
        assert current == before, output[-3000:]
        assert failure and "a node left the cluster" in failure["error"], failure or output[-3000:]
    info = index.info(current)
    ids, _, _ = index.chunk_rows(current)
    assert len(set(ids)) == info.chunks_total  # whichever version is current is whole

    rerun_started = time.monotonic()
    rerun = multinode.submit_ingest(corpus)
    rerun_s = time.monotonic() - rerun_started
    names = {p.name for p in corpus.iterdir()}
    assert rerun["files_indexed"] + rerun["files_unchanged"] + len(rerun["files_failed"]) == len(names)
    assert index.current_version() == rerun["index_version"] or not rerun["new_version_created"]
    figures = {
        "fault": "worker node SIGKILLed mid-ingest (2 of 3 nodes left: head + 1 worker)",
        "killed_after_s": round(killed_at, 1),
        "job_returncode": returncode,
        "job_s": round(job_s, 1),
        "job_outcome": "finished on the remaining node" if returncode == 0 else "failed: " + failure["error"][:300],
        "rerun_s": round(rerun_s, 1),
        "rerun_files_indexed": rerun["files_indexed"],
    }
    (ARTIFACTS / "node-lost-mid-ingest.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfault report node-lost-mid-ingest: {json.dumps(figures)}")
