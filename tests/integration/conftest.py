"""One Ray session for all integration tests: started here, joined by every CLI run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.local_cluster import free_port  # noqa: F401  (re-exported for the tests)


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str
    dashboard_url: str
    metrics_url: str  # this node's Prometheus endpoint
    session_dir: str


@pytest.fixture(scope="session")
def ray_cluster() -> RayCluster:
    import ray

    # Jobs submitted to this cluster run `python ...` from the cluster's PATH: make it this venv's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    dashboard_port, metrics_port = free_port(), free_port()
    # address="local": a private cluster, never Ray's default GCS port 6379 where Redis listens.
    context = ray.init(
        address="local",
        # Logical CPUs, more than the 2 cores: Serve apps (1.5 CPUs each at minimum) and ingest
        # jobs share this cluster, as they share a node in production (see README, Serving).
        num_cpus=6,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        configure_logging=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,  # as `ray start --metrics-export-port`
    )
    cluster = RayCluster(
        context.address_info["gcs_address"],
        f"http://127.0.0.1:{dashboard_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        context.address_info["session_dir"],
    )
    yield cluster
    ray.shutdown()


@dataclass
class IngestResult:
    returncode: int
    summary: dict[str, Any]
    stderr: str


def ingest_env(index_dir: Path, cluster: RayCluster | None, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env["RAG_INDEX_DIR"] = str(index_dir)
    env["RAG_CONFIG"] = str(REPO_ROOT / "configs" / "rag.yaml")
    env["PYTHONUNBUFFERED"] = "1"
    if cluster is not None:
        env["RAY_ADDRESS"] = cluster.gcs_address
    env.update(settings)
    return env


def run_ingest(index_dir: Path, cluster: RayCluster | None, *args: str, timeout: float = 600, **settings: str) -> IngestResult:
    """`python -m ingest_jobs.index ARGS` as a user runs it; returns the last stdout line parsed."""
    process = subprocess.run(
        [sys.executable, "-m", "ingest_jobs.index", *args],
        cwd=REPO_ROOT,
        env=ingest_env(index_dir, cluster, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    assert lines, f"no stdout; stderr tail:\n{process.stderr[-3000:]}"
    return IngestResult(process.returncode, json.loads(lines[-1]), process.stderr)


OCR_QUESTIONS = json.loads((REPO_ROOT / "tests" / "data" / "ocr_questions.json").read_text())
IMAGE_PDF_FACTS = [fact for fact in OCR_QUESTIONS if fact["file"].endswith(".pdf")]
IMAGE_FILE_FACTS = [fact for fact in OCR_QUESTIONS if not fact["file"].endswith(".pdf")]


def assert_found_by_ocr(results: list[dict], fact: dict) -> None:
    """`results` (of /v1/retrieve) hold the fact's page, marked as OCR'd, with its expected words."""
    hits = [hit for hit in results if hit["file"] == fact["file"] and hit["page"] == fact["page"]]
    assert hits, [(hit["file"], hit["page"]) for hit in results]
    assert hits[0]["location"]["ocr"] is True and 0 < hits[0]["location"]["ocr_confidence"] <= 100
    text = " ".join(hit["text"] for hit in hits)
    for word in fact["expect"]:
        assert word in text, text


def pdf_expectations(pdf_dir: Path) -> tuple[set[str], set[str], set[str], list[str]]:
    """All PDFs, the unreadable ones (malformed, empty), the image-only scans, the passwords."""
    import csv

    rows = list(csv.DictReader((pdf_dir / "MANIFEST.tsv").open(), delimiter="\t"))
    no_text = {r["filename"] for r in rows if r["extractable_text"] == "no"}
    scans = {r["filename"] for r in rows if r["extractable_text"] == "no" and r["category"].startswith("scanned")}
    passwords = sorted({r["password"] for r in rows if r["password"]})
    return {r["filename"] for r in rows}, no_text - scans, scans, passwords


@dataclass(frozen=True)
class SamplesIndex:
    source: Path  # a copy of samples/
    index_dir: Path  # v000001: that copy indexed


@pytest.fixture(scope="session")
def samples_index_template(tmp_path_factory, ray_cluster) -> SamplesIndex:
    """samples/ indexed once per session through the CLI; tests get copies (`samples_index`)."""
    import shutil

    from tests.conftest import SAMPLES_DIR

    root = tmp_path_factory.mktemp("samples-index")
    shutil.copytree(SAMPLES_DIR, root / "docs")
    result = run_ingest(root / "index", ray_cluster, "--source", str(root / "docs"))
    assert result.returncode == 0 and result.summary["index_version"] == "v000001", result.stderr[-3000:]
    return SamplesIndex(root / "docs", root / "index")


@pytest.fixture()
def samples_index(samples_index_template, tmp_path) -> SamplesIndex:
    """This test's own copy of samples/ and of its index (v000001), for tests whose subject is
    what comes after a first ingest. Safe to copy: the writer has exited, versions hold no
    absolute paths, and files are matched by content hash. Only the audit trail names the
    template's folder, so tests about the audit trail run their own first ingest."""
    import shutil

    shutil.copytree(samples_index_template.source, tmp_path / "docs")
    shutil.copytree(samples_index_template.index_dir, tmp_path / "index", ignore=shutil.ignore_patterns("ingest.lock*"))
    return SamplesIndex(tmp_path / "docs", tmp_path / "index")


@dataclass
class InterruptedIngest:
    """The one ingest of all shared PDFs in a test session, made the hard way: the samples are
    indexed (v000001), every PDF is added, a run is killed once it has written chunks, and a rerun
    completes. What the killed run left is recorded before the rerun starts."""

    index_dir: Path
    first: IngestResult
    after_kill_current: str | None
    after_kill_partial: list[str]
    after_kill_vacation_top: str
    after_kill_documents: int
    rerun: IngestResult


@pytest.fixture(scope="session")
def interrupted_pdf_ingest(tmp_path_factory, ray_cluster, pdf_dir) -> InterruptedIngest:
    import shutil
    import signal
    import threading

    from rag_core.embedding import EmbeddingModel
    from rag_core.index_reader import IndexReader
    from rag_core.index_store import VersionedIndex
    from tests.conftest import SAMPLES_DIR

    root = tmp_path_factory.mktemp("pdf-index")
    source, index_dir = root / "docs", root / "index"
    shutil.copytree(SAMPLES_DIR, source)
    first = run_ingest(index_dir, ray_cluster, "--source", str(source))
    assert first.returncode == 0, first.stderr[-3000:]
    all_pdfs, _, _, passwords = pdf_expectations(pdf_dir)
    for name in all_pdfs:
        shutil.copy(pdf_dir / name, source / name)
    settings = {"RAG_INGEST__PASSWORDS": json.dumps(passwords), "RAG_INGEST__PROGRESS_INTERVAL_S": "0.5"}

    # The run to kill only has to get as far as writing chunks: without OCR and with small write
    # batches it gets there in seconds instead of minutes of work the rerun would do again.
    killed_settings = {**settings, "RAG_INGEST__OCR__ENABLED": "false", "RAG_INGEST__WRITE_BATCH_SIZE": "32"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest_jobs.index", "--source", str(source)],
        cwd=REPO_ROOT,
        env=ingest_env(index_dir, ray_cluster, **killed_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_progress = threading.Event()

    def watch() -> None:
        for line in process.stderr:
            if '"progress"' in line and '"chunks_written": 0' not in line:
                seen_progress.set()

    threading.Thread(target=watch, daemon=True).start()
    assert seen_progress.wait(timeout=600), "no progress line from the running job"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    index = VersionedIndex(index_dir)
    current_after_kill = index.current_version()
    reader = IndexReader(index)
    try:
        reader.refresh()
        model = EmbeddingModel.from_setting("auto")
        top = reader.search(model.embed_queries(["How many paid vacation days does an employee get per year?"])[0], 1)[0].file
    finally:
        reader.close()
    client, collection = index.backend.open(index.current_version())
    try:
        documents = collection.count()
    finally:
        index.backend.release(client)
    partial = [v for v in index._all_version_dirs() if v not in index.committed_versions()]
    rerun = run_ingest(index_dir, ray_cluster, "--source", str(source), timeout=1500, **settings)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return InterruptedIngest(index_dir, first, current_after_kill, partial, top, documents, rerun)


@pytest.fixture(scope="session")
def pdf_index(interrupted_pdf_ingest) -> tuple[Path, dict[str, Any]]:
    """An index of all shared PDFs and the samples, built once per session through the CLI."""
    return interrupted_pdf_ingest.index_dir, interrupted_pdf_ingest.rerun.summary


@pytest.fixture(scope="session")
def serve_http(ray_cluster) -> str:
    """Serve's HTTP proxy in the shared cluster; apps are added with `deploy_app`."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def deploy_app(serve_http: str):
    """deploy(name, **settings): the real graph under /<name> with settings from configs/rag.yaml
    plus overrides; every app deployed by a test is deleted after it, freeing its CPUs."""
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph

    deployed: list[str] = []

    def deploy(name: str, deployment_options: dict[str, dict[str, Any]] | None = None, **settings: Any) -> str:
        # Tests drive more requests from one client than the anonymous rate limit allows; the
        # rate-limit tests configure their own keys and limits.
        settings.setdefault("auth", {"rate_limit_enabled": False})
        app_settings = load_settings(REPO_ROOT / "configs" / "rag.yaml", **settings)
        serve.run(build_graph(app_settings, deployment_options), name=name, route_prefix=f"/{name}")
        deployed.append(name)
        return f"{serve_http}/{name}"

    yield deploy
    for name in deployed:
        serve.delete(name)


def submit_ingest_job(
    cluster: RayCluster, source: str, env_vars: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """`ray job submit ... -- python -m ingest_jobs.index --source SOURCE` against the test
    cluster's dashboard, as users run it; returns the process and the job's JSON summary."""
    import time

    runtime_env = {"env_vars": env_vars}
    for _ in range(
        40
    ):  # right after start the dashboard may have no job agent yet ("try again later"), for a minute or more on a busy machine
        process = subprocess.run(
            [
                "ray",
                "job",
                "submit",
                "--address",
                cluster.dashboard_url,
                "--working-dir",
                ".",
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                "python",
                "-m",
                "ingest_jobs.index",
                "--source",
                source,
                *args,
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if "No available agent to submit job" not in process.stdout + process.stderr:
            break
        time.sleep(5)
    summaries = [json.loads(line) for line in process.stdout.splitlines() if line.startswith('{"index_version"')]
    return process, (summaries[-1] if summaries else {})


UPLOAD_KEYS = {
    "acme": {"tenant": "acme"},
    "globex": {"tenant": "globex"},
    "staff": {"tenant": "default"},  # reads the samples (tenant default)
    "admin": {"tenant": "ops", "admin": True},
}
SECRET = {name: f"rag_docs_{name}_0123456789abcdef" for name in UPLOAD_KEYS}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET[name]}"}


# Per module: the document API's and the web page's tests are modules apart. Kept for the session, the
# app's five idle replicas (polling their index every 0.5 s) used about 1.5% of a core each for
# the hour in between (`ps`: ~22 CPU s per replica over its first 20 minutes), several minutes of
# CPU against the ~20 s of a second deployment.
@pytest.fixture(scope="module")
def uploads_service(tmp_path_factory, samples_index_template, serve_http):
    """(base URL, index dir) of the graph as configs/rag.yaml builds it, with API keys (UPLOAD_KEYS),
    over a copy of the samples index, for the document API and the web page; uploads wait 1 s for
    more before a run, replicas look for a new version every 0.5 s."""
    import shutil

    import ray
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph
    from serve_app.auth import hash_key
    from serve_app.documents.actor import NAMESPACE, registry_actor_name

    root = tmp_path_factory.mktemp("uploads-service")
    shutil.copytree(samples_index_template.index_dir, root / "index", ignore=shutil.ignore_patterns("ingest.lock*"))
    keys = [{"name": name, "sha256": hash_key(SECRET[name]), **spec} for name, spec in UPLOAD_KEYS.items()]
    settings = load_settings(
        REPO_ROOT / "configs/rag.yaml",
        index_dir=root / "index",
        auth={"keys": keys, "rate_limit_enabled": False},
        retrieval={"reload_check_interval_s": 0.5},
        documents={"batch_wait_s": 1.0, "poll_interval_s": 0.5},
    )
    serve.run(build_graph(settings), name="uploads", route_prefix="/uploads")
    base = f"{serve_http}/uploads"
    from tests.integration.test_serve_app import wait_for

    wait_for(f"{base}/health")
    yield base, root / "index"
    serve.delete("uploads")
    try:
        ray.kill(ray.get_actor(registry_actor_name(settings), namespace=NAMESPACE))
    except ValueError:
        pass  # no document request reached this app


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """(base_url, model name) of a running llama.cpp server (SmolLM2-135M-Instruct); fails, never
    skips, when it cannot run."""
    from tests.integration.llm_server import LLMServerError, start_llama_server, stop_llama_server

    try:
        server = start_llama_server(log_path=tmp_path_factory.mktemp("llama-server") / "server.log")
    except LLMServerError as exc:
        pytest.fail(f"cannot start the local OpenAI-compatible LLM server: {exc}", pytrace=False)
    try:
        yield server.base_url, server.model
    finally:
        stop_llama_server(server)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright (tests/browser.py). Per module: while it is
    open, Playwright's sync API holds an event loop on this thread, where asyncio.run() then fails."""
    from playwright.sync_api import sync_playwright

    from tests.browser import chromium_executable

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
        yield launched
        launched.close()
