"""The stores fail under the service. The Chroma server restarts while the graph serves in cluster
mode: queries fail fast (503 + Retry-After, never a hang past the request timeout) and the service
recovers by itself when the server is back, with no redeploy. The index's disk fills during an
ingest: a clear error, exit code 1, the previous version current and readable, the partial one
removed, and the next run with space succeeds. Figures go to test-artifacts/faults/."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag_core.embedding import EmbeddingModel
from rag_core.index_reader import IndexReader
from rag_core.index_store import VersionedIndex
from tests.fault_harness import ARTIFACTS, SteadyLoad, report, wait_until
from tests.integration.conftest import run_ingest
from tests.integration.test_serve_app import wait_for
from tests.local_cluster import ChromaServer

pytestmark = pytest.mark.timeout(600)


def test_a_chroma_server_restart_fails_queries_fast_and_the_service_recovers_alone(tmp_path, samples_index, ray_cluster, deploy_app):
    chroma = ChromaServer(tmp_path / "chroma").start()
    try:
        index_dir = tmp_path / "index"
        ingest = run_ingest(index_dir, ray_cluster, "--source", str(samples_index.source), RAG_CHROMA_URL=chroma.url)
        assert ingest.returncode == 0, ingest.stderr[-3000:]
        base = deploy_app("chromafault", index_dir=index_dir, chroma_url=chroma.url)
        wait_for(f"{base}/health")

        with SteadyLoad(base) as load:
            time.sleep(4)
            fault_at = load.now()
            chroma.stop()
            time.sleep(6)  # down: every query in this window must be answered, quickly
            restart_at = load.now()
            chroma.start()
            wait_until(lambda: any(o.status == 200 for o in load.between(restart_at, load.now())), 60, what="a query answered again")
            recovered_at = load.now()
            time.sleep(4)
            end = load.now()
        figures = report(
            load,
            "Chroma server stopped for 6 s, then restarted",
            "2 clients back to back on /v1/retrieve (samples index, server mode)",
            0,
            fault_at,
            recovered_at,
            end,
            server_down_s=round(restart_at - fault_at, 2),
            recovered_after_restart_s=round(recovered_at - restart_at, 2),
        )
        figures.write("chroma-server-restart")
        down = load.between(fault_at + 0.5, restart_at)
        assert down and {o.status for o in down} == {503}, figures.statuses
        assert all(o.retry_after for o in down)
        assert max(o.latency_s for o in down) < 2.0, "a query waited on the stopped server"
        assert {o.status for o in load.between(0, end)} <= {200, 503}  # never a 500
        assert figures.failed_after_recovery == 0
        assert figures.extra["recovered_after_restart_s"] < 30
    finally:
        chroma.stop()


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of `size_bytes` at `path` (the test runs as root, as CI does); yields a function
    that resizes it. Where mounting is not allowed the test fails: a skipped fault is no test."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True, capture_output=True)

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True, capture_output=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def disk_used(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.used


def test_a_full_disk_fails_the_ingest_cleanly_and_the_next_run_with_space_succeeds(tmp_path, samples_index, ray_cluster, pdf_dir):
    source = samples_index.source
    added = ["unstructured__multi-column.pdf", "unstructured__fr_olap.pdf"]
    for name in added:
        shutil.copy(pdf_dir / name, source / name)
    disk = tmp_path / "disk"
    with small_disk(disk, 64 * 2**20) as resize:
        index_dir = disk / "index"
        shutil.copytree(samples_index.index_dir, index_dir)  # v000001: the samples
        resize(disk_used(disk) + 256 * 2**10)  # room for a little more, not for the new PDFs
        full = run_ingest(index_dir, ray_cluster, "--source", str(source))
        assert full.returncode == 1, full.summary
        assert full.summary["error"].startswith("the index disk is full"), full.summary
        assert full.summary["index_version"] == "v000001"
        index = VersionedIndex(index_dir)
        assert index.current_version() == "v000001" and index._all_version_dirs() == ["v000001"]  # the partial one is gone
        reader = IndexReader(index)
        try:
            reader.refresh()
            vacation = reader.search(EmbeddingModel.from_setting("auto").embed_queries(["How many vacation days per year?"])[0], 1)
        finally:
            reader.close()
        assert vacation[0].file == "vacation-policy.md"  # the previous version still answers

        resize(64 * 2**20)
        again = run_ingest(index_dir, ray_cluster, "--source", str(source))
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.summary["index_version"] == "v000002" and again.summary["files_indexed"] == len(added)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    figures = {"fault": "index disk full during an ingest (tmpfs)", "exit_code": full.returncode, "error": full.summary["error"][:200]}
    (ARTIFACTS / "disk-full.json").write_text(json.dumps(figures, indent=2) + "\n")
