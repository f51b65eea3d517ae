"""The document API over HTTP on the running Serve graph, as a user drives it: upload a real PDF,
watch its Ray job, ask about it through the official `openai` client with a follow-up, delete it
and see it gone from every answer path and from kept versions; tenants kept apart; a burst of
uploads batched into a few runs, uploads during a run picked up by the next one. And the same
API in the single-process app, whose runs are child processes."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from rag_core.index_store import VersionedIndex
from rag_core.manifest import doc_key
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SECRET, bearer
from tests.integration.test_serve_app import GAO_SUMMARY


def wait_for_job(base: str, key: str, job_id: str, states: tuple[str, ...] = ("succeeded", "failed"), timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/ingest/jobs/{job_id}", headers=bearer(key), timeout=30).json()
        if job.get("status") in states:
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} not {states} within {timeout_s} s: {job}")


def retrieved_files(base: str, key: str, query: str, top_k: int = 10) -> tuple[set[str], str]:
    body = httpx.post(f"{base}/v1/retrieve", headers=bearer(key), json={"query": query, "top_k": top_k}, timeout=60).json()
    return {r["file"] for r in body["results"]}, body["index_version"]


def wait_for_version(base: str, version: str, timeout_s: float = 60) -> None:
    """Until the replicas answer from `version` (they follow the pointer every 0.5 s here)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if retrieved_files(base, "admin", "anything", 1)[1] == version:
            return
        time.sleep(0.3)
    pytest.fail(f"the graph did not move to {version} in {timeout_s} s")


def test_upload_watch_ask_with_a_follow_up_delete_and_it_is_gone(uploads_service, pdf_dir) -> None:
    base, index_dir = uploads_service
    pdf = (pdf_dir / GAO_SUMMARY).read_bytes()  # 1.2 MB: far over the JSON routes' 64 KiB limit
    upload = {"files": [("files", (GAO_SUMMARY, pdf, "application/pdf"))], "data": {"metadata": json.dumps({"kind": "report"})}}
    accepted = httpx.post(f"{base}/v1/documents", headers=bearer("acme"), timeout=60, **upload)
    assert accepted.status_code == 202, accepted.text
    job_id, doc = accepted.json()["job_id"], accepted.json()["documents"][0]
    assert (doc["status"], doc["file"], doc["source"]) == ("pending", f"acme/{GAO_SUMMARY}", "uploads")

    job = wait_for_job(base, "acme", job_id)
    assert job["status"] == "succeeded" and job["run_id"].startswith("rag-uploads-"), job
    version = job["summary"]["index_version"]
    assert job["summary"]["files_indexed"] == 1 and job["summary"]["files_failed"] == [], job
    listed = {d["id"]: d for d in httpx.get(f"{base}/v1/documents", headers=bearer("acme")).json()["documents"]}
    assert listed[doc["id"]]["status"] == "indexed" and listed[doc["id"]]["chunks"] > 0 and listed[doc["id"]]["index_version"] == version
    assert listed[doc["id"]]["metadata"] == {"kind": "report"}
    # Staged originals are kept until their run has indexed them, no longer.
    assert not [p for p in (index_dir / "uploads").rglob("*.pdf")]

    again = httpx.post(f"{base}/v1/documents", headers=bearer("acme"), timeout=60, **upload).json()
    assert again["duplicates"] == [doc["id"]] and again["job_id"] == job_id
    # Refused by the registry actor on the head node: its 4xx crosses Ray intact, never a 500.
    twice = httpx.post(f"{base}/v1/documents", headers=bearer("acme"), files=[("files", ("a.md", "one")), ("files", ("a.md", "two"))])
    assert twice.status_code == 422 and "the same file name twice" in twice.json()["error"], twice.text

    wait_for_version(base, version)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=SECRET["acme"], timeout=60, max_retries=0)
    assert "rag/uploads" in [m.id for m in client.models.list().data]
    messages: list[dict] = []
    first_question = "In what month and year did the White House release the National Cybersecurity Strategy reviewed in the GAO summary?"
    turns = [(first_question, "March 2023"), ("How many pillars is it organised around?", "five pillars")]
    for question, fact in turns:
        messages.append({"role": "user", "content": question})
        completion = client.chat.completions.create(model="rag/uploads", messages=messages)
        answer = completion.choices[0].message.content
        assert "[1]" in answer and {s["file"] for s in completion.sources} == {f"acme/{GAO_SUMMARY}"}, completion.rag
        assert fact in " ".join(" ".join(s["text"].split()) for s in completion.sources), completion.rag
        messages.append({"role": "assistant", "content": answer})
    cached = httpx.post(f"{base}/v1/query", headers=bearer("acme"), json={"question": turns[0][0]}).json()
    assert f"acme/{GAO_SUMMARY}" in {s["file"] for s in cached["sources"]}
    assert retrieved_files(base, "globex", turns[0][0])[0].isdisjoint({f"acme/{GAO_SUMMARY}"})

    deleted = httpx.delete(f"{base}/v1/documents/{doc['id']}", headers=bearer("acme"))
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["document"]["status"] == "deleting" and deleted.json()["kept_versions_purged"] is True
    delete_job = deleted.json()["job_id"]
    assert delete_job in deleted.json()["effective"]
    job = wait_for_job(base, "acme", delete_job)
    assert job["status"] == "succeeded" and job["summary"]["files_deleted"] == 1, job
    assert version in job["summary"]["versions_purged"]  # the kept version that held it: no rollback brings it back
    gone = httpx.get(f"{base}/v1/documents/{doc['id']}", headers=bearer("acme")).json()
    assert gone["status"] == "deleted" and gone["deleted_in_version"] == job["summary"]["index_version"]

    wait_for_version(base, job["summary"]["index_version"])
    assert f"acme/{GAO_SUMMARY}" not in retrieved_files(base, "acme", turns[0][0])[0]
    after = httpx.post(f"{base}/v1/query", headers=bearer("acme"), json={"question": turns[0][0]}).json()
    assert f"acme/{GAO_SUMMARY}" not in {s["file"] for s in after["sources"]} and after["index_version"] != cached["index_version"]
    completion = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": turns[0][0]}])
    assert f"acme/{GAO_SUMMARY}" not in {s["file"] for s in completion.sources}
    assert "rag/uploads" not in [m.id for m in client.models.list().data]
    index = VersionedIndex(index_dir)
    key = doc_key("uploads", f"acme/{GAO_SUMMARY}")
    assert all(key not in index.manifest(v).files for v in index.committed_versions())


def test_a_burst_of_uploads_is_a_few_runs_and_uploads_during_a_run_wait_for_the_next(uploads_service) -> None:
    base, _ = uploads_service

    def upload(number: int) -> str:
        text = f"Globex field note {number}: the shelter for flock {number} is painted colour number {number * 7}.\n"
        response = httpx.post(f"{base}/v1/documents", headers=bearer("globex"), files=[("files", (f"note-{number:02d}.txt", text))])
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    first = [upload(n) for n in range(10)]
    running = wait_for_job(base, "globex", first[-1], states=("running", "succeeded", "failed"))
    later = [upload(n) for n in range(10, 50)]  # arrive while the first run indexes
    jobs = [wait_for_job(base, "globex", job) for job in first + later]
    assert {job["status"] for job in jobs} == {"succeeded"}, [job["error"] for job in jobs]
    runs = [job["run_id"] for job in jobs]
    assert len(set(runs[:10])) == 1 and running["run_id"] == runs[0], runs
    assert runs[0] not in runs[10:] and len(set(runs)) <= 3, runs  # 50 uploads, at most a few runs

    listed = httpx.get(f"{base}/v1/documents", headers=bearer("globex")).json()["documents"]
    assert len(listed) == 50 and {d["status"] for d in listed} == {"indexed"}
    wait_for_version(base, max(d["index_version"] for d in listed))
    files, _ = retrieved_files(base, "globex", "Which colour number is the shelter for flock 37 painted?", 3)
    assert "globex/note-37.txt" in files
    acme_files, _ = retrieved_files(base, "acme", "Which colour number is the shelter for flock 37 painted?", 10)
    assert not any(f.startswith("globex/") for f in acme_files)


def test_the_single_process_app_indexes_uploads_in_child_processes(tmp_path, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from rag_core.settings import load_settings
    from serve_app.local import create_local_app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = load_settings(
        REPO_ROOT / "configs/rag.yaml",
        index_dir=tmp_path / "index",
        retrieval={"reload_check_interval_s": 0.5},
        documents={"batch_wait_s": 0.2, "poll_interval_s": 0.2},
    )
    with TestClient(create_local_app(settings)) as client:
        text = "The Osprey lab keeps its spare microscope slides in drawer nine.\n"
        accepted = client.post("/v1/documents", files=[("files", ("lab.md", text))])
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 600
        while (job := client.get(f"/v1/ingest/jobs/{accepted.json()['job_id']}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded" and job["documents"][0]["status"] == "indexed", job
        deadline = time.monotonic() + 60
        while not (hits := client.post("/v1/retrieve", json={"query": "Where are the spare microscope slides?", "top_k": 1}).json()).get(
            "results"
        ):
            assert time.monotonic() < deadline, hits
            time.sleep(0.5)
        assert hits["results"][0]["file"] == "default/lab.md" and hits["results"][0]["source"] == "uploads"
