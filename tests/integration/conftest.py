"""One Ray session for all integration tests: started here, joined by every CLI run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str
    dashboard_url: str


@pytest.fixture(scope="session")
def ray_cluster() -> RayCluster:
    import ray

    # Jobs submitted to this cluster run `python ...` from the cluster's PATH: make it this venv's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    dashboard_port = free_port()
    # address="local": a private cluster, never Ray's default GCS port 6379 where Redis listens.
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        configure_logging=False,
        log_to_driver=False,
    )
    cluster = RayCluster(context.address_info["gcs_address"], f"http://127.0.0.1:{dashboard_port}")
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
