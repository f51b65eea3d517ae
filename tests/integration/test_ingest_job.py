"""The ingest job end to end, as users run it: the CLI (joining a real local Ray cluster),
real ChromaDB, the real embedding model, real PDFs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_jobs.index import EXIT_LOCKED, EXIT_USAGE
from ingest_jobs.pipeline import make_chunk_id
from rag_core.contextual import indexed_text
from rag_core.embedding import PACKAGED_MINILM, EmbeddingModel, packaged_minilm_path
from rag_core.index_reader import IndexReader
from rag_core.index_store import VERSION_INFO_FILE, VersionedIndex, read_parquet_version
from tests.conftest import REPO_ROOT, SAMPLES_DIR
from tests.integration.conftest import ingest_env, pdf_expectations, run_ingest, submit_ingest_job
from tests.local_cluster import ChromaServer

SUMMARY_KEYS = {
    "index_version",
    "files_seen",
    "files_indexed",
    "files_unchanged",
    "files_deleted",
    "files_failed",
    "chunks_added",
    "chunks_deleted",
    "chunks_total",
    "embedding_model",
    "duration_s",
}


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel.from_setting("auto")


def search(index_dir: Path, model: EmbeddingModel, query: str, top_k: int = 5, **store: str):
    index = VersionedIndex(index_dir, store.get("chroma_url"), store.get("prefix", "rag"))
    reader = IndexReader(index)
    try:
        reader.refresh()
        return reader.search(model.embed_queries([query])[0], top_k)
    finally:
        reader.close()


def all_documents(index_dir: Path, **store: str) -> list[tuple[str, dict]]:
    index = VersionedIndex(index_dir, store.get("chroma_url"), store.get("prefix", "rag"))
    client, collection = index.backend.open(index.current_version())
    try:
        got = collection.get(include=["documents", "metadatas"])
        return list(zip(got["documents"], got["metadatas"]))
    finally:
        index.backend.release(client)


def copy_samples(target: Path) -> Path:
    shutil.copytree(SAMPLES_DIR, target)
    return target


def test_samples_are_indexed_and_searchable_then_rerun_embeds_nothing(tmp_path, ray_cluster, model):
    index_dir = tmp_path / "index"
    first = run_ingest(index_dir, ray_cluster, "--source", str(SAMPLES_DIR), RAG_INGEST__PROGRESS_INTERVAL_S="0.5")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = first.summary
    assert SUMMARY_KEYS <= set(summary)
    assert summary["index_version"] == "v000001"
    assert (summary["files_seen"], summary["files_indexed"], summary["files_failed"]) == (4, 4, [])
    assert summary["chunks_added"] == summary["chunks_total"] > 4
    assert summary["embedding_model"] == PACKAGED_MINILM
    progress = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{") and '"progress"' in line]
    assert progress and progress[-1]["chunks_written"] == summary["chunks_added"]

    top = search(index_dir, model, "How many paid vacation days does an employee get per year?")[0]
    assert top.file == "vacation-policy.md" and "27 days" in top.text
    top = search(index_dir, model, "hotel cost limit per night in London")[0]
    assert (top.file, top.page) == ("expense-guide.pdf", 1) and "260 euros" in top.text
    top = search(index_dir, model, "how soon must expense reports be submitted")[0]
    assert (top.file, top.page) == ("expense-guide.pdf", 2)

    again = run_ingest(index_dir, ray_cluster, "--source", str(SAMPLES_DIR))
    assert again.returncode == 0
    assert again.summary["index_version"] == "v000001"
    assert (again.summary["files_unchanged"], again.summary["files_indexed"], again.summary["chunks_added"]) == (4, 0, 0)
    assert again.summary["new_version_created"] is False

    audit = subprocess.run(
        [sys.executable, "-m", "ingest_jobs.audit", "--files"],
        cwd=REPO_ROOT,
        env=ingest_env(index_dir, None),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "version=v000001" in audit and "added    vacation-policy.md" in audit
    records = [json.loads(line) for line in (index_dir / "audit.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert records[0]["triggered_by"] and records[0]["source"] == str(SAMPLES_DIR)


def test_changed_and_deleted_content_is_no_longer_retrievable(tmp_path, ray_cluster, model):
    source, index_dir = tmp_path / "docs", tmp_path / "index"
    source.mkdir()
    (source / "zebra.txt").write_text("The zebra enclosure door code is ORCHID-7741. Only keepers may use it.\n")
    (source / "falcon.md").write_text("# Project Falcon\n\nProject Falcon launches on 12 March with three satellites.\n")
    shutil.copy(SAMPLES_DIR / "expense-guide.pdf", source / "expense-guide.pdf")
    first = run_ingest(index_dir, ray_cluster, "--source", str(source))
    assert first.returncode == 0 and first.summary["files_indexed"] == 3
    assert search(index_dir, model, "zebra enclosure door code")[0].file == "zebra.txt"
    v1_manifest = VersionedIndex(index_dir).manifest("v000001").of_source("docs")  # the folder's name
    removed_chunks = len(v1_manifest["zebra.txt"].chunk_ids) + len(v1_manifest["falcon.md"].chunk_ids)

    (source / "zebra.txt").unlink()
    (source / "falcon.md").write_text("# Project Falcon\n\nProject Falcon was cancelled; no satellites will fly.\n")
    (source / "heron.txt").write_text("Project Heron replaces Falcon and studies river birds.\n")
    second = run_ingest(index_dir, ray_cluster, "--source", str(source))
    s = second.summary
    assert second.returncode == 0
    assert (s["index_version"], s["files_indexed"], s["files_unchanged"], s["files_deleted"]) == ("v000002", 2, 1, 1)
    assert s["chunks_deleted"] == removed_chunks
    assert s["chunks_total"] == first.summary["chunks_total"] - removed_chunks + s["chunks_added"]

    documents = all_documents(index_dir)
    assert len(documents) == s["chunks_total"]
    assert not [d for d, m in documents if "ORCHID-7741" in d or m["file"] == "zebra.txt"]
    assert not [d for d, m in documents if "launches on 12 March" in d]
    assert any("was cancelled" in d for d, _ in documents)
    assert all(h.file != "zebra.txt" for h in search(index_dir, model, "zebra enclosure door code", top_k=10))
    falcon = [h for h in search(index_dir, model, "When does Project Falcon launch?", top_k=10) if h.file == "falcon.md"]
    assert falcon and all("cancelled" in h.text for h in falcon)
    # Unchanged files keep their original chunks (carried over, not re-embedded).
    pdf_chunks = [m for _, m in documents if m["file"] == "expense-guide.pdf"]
    assert pdf_chunks and {m["index_version"] for m in pdf_chunks} == {"v000001"}

    # Rollback brings the previous version back atomically; the next ingest diffs against it.
    rollback = subprocess.run(
        [sys.executable, "-m", "ingest_jobs.rollback"], cwd=REPO_ROOT, env=ingest_env(index_dir, None), capture_output=True, text=True
    )
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert json.loads(rollback.stdout.splitlines()[-1]) == {"index_version": "v000001", "previous_version": "v000002"}
    assert search(index_dir, model, "zebra enclosure door code")[0].file == "zebra.txt"
    third = run_ingest(index_dir, ray_cluster, "--source", str(source))
    assert third.summary["files_deleted"] == 1 and third.summary["index_version"] == "v000003"
    assert not [d for d, m in all_documents(index_dir) if m["file"] == "zebra.txt"]
    events = [json.loads(line)["event"] for line in (index_dir / "audit.jsonl").read_text().splitlines()]
    assert events == ["ingest", "ingest", "rollback", "ingest"]


def as_index_from_before_sources(index_dir: Path) -> None:
    """Rewrite the current version as releases before named sources wrote it: manifest keys are
    paths with no source, and the Parquet rows have no source column."""
    index = VersionedIndex(index_dir)
    version = index.current_version()
    manifest_path = index.versions_root / version / "manifest.json"
    legacy_id = {}  # chunk ids as they were made then: from the path alone
    for part in index.parquet_dir(version).glob("*.parquet"):
        table = pq.read_table(part)
        rows = table.select(["file", "file_sha256", "chunk_index", "chunk_id"]).to_pylist()
        ids = [make_chunk_id(r["file_sha256"], r["file"], r["chunk_index"]) for r in rows]
        legacy_id.update({r["chunk_id"]: new for r, new in zip(rows, ids)})
        table = table.set_column(table.schema.get_field_index("chunk_id"), "chunk_id", pa.array(ids, type=pa.string()))
        pq.write_table(table.drop_columns(["source"]), part)
    entries = json.loads(manifest_path.read_text())
    legacy = {
        e["path"]: {**{k: v for k, v in e.items() if k not in ("source", "path")}, "chunk_ids": [legacy_id[c] for c in e["chunk_ids"]]}
        for e in entries.values()
    }
    manifest_path.write_text(json.dumps(legacy))
    # The trail as those releases wrote it: no source names.
    audit = index_dir / "audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    audit.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "source_name"}) + "\n" for r in records))


def test_several_named_sources_live_in_one_index_and_an_old_index_is_adopted_without_reembedding(tmp_path, ray_cluster, model):
    docs, more, index_dir = tmp_path / "docs", tmp_path / "more", tmp_path / "index"
    docs.mkdir()
    more.mkdir()
    (docs / "a.txt").write_text("The zebra enclosure door code is ORCHID-7741.\n")
    (docs / "b.txt").write_text("Project Falcon launches on 12 March with three satellites.\n")
    # Several chunks under a title line: all but the first are embedded with the title in front.
    notes = " ".join(f"Heron count {i}: {i * 7} birds were seen near the reed beds that morning." for i in range(20))
    (more / "a.txt").write_text(
        f"Heron station notes\n\nThe heron station opens in May; the same file name in another folder.\n\n{notes}\n"
    )
    first = run_ingest(index_dir, ray_cluster, "--source", str(docs))
    assert first.returncode == 0 and first.summary["source"] == "docs" and first.summary["sources"] == {"docs": 2}
    as_index_from_before_sources(index_dir)

    # Another folder first: the old documents were read from docs/, so they stay, unnamed.
    second = run_ingest(index_dir, ray_cluster, "--source", str(more))
    s = second.summary
    assert second.returncode == 0 and s["files_deleted"] == 0 and s["files_adopted"] == 0
    assert s["sources"] == {"": 2, "more": 1} and s["chunks_total"] == first.summary["chunks_total"] + s["chunks_added"]
    # docs/ again: its old documents are adopted as the source "docs", their chunks carried, not embedded again.
    third = run_ingest(index_dir, ray_cluster, "--source", str(docs))
    s = third.summary
    assert third.returncode == 0 and s["files_adopted"] == 2 and s["chunks_added"] == 0 and s["files_unchanged"] == 2
    assert s["sources"] == {"docs": 2, "more": 1} and s["new_version_created"]
    documents = all_documents(index_dir)
    assert {(m["source"], m["file"]) for _, m in documents} == {("docs", "a.txt"), ("docs", "b.txt"), ("more", "a.txt")}
    assert {m["index_version"] for _, m in documents if m["source"] == "docs"} == {"v000001"}  # as first embedded

    # A source's own deletions are honoured; the other source's file of the same name stays.
    (docs / "a.txt").unlink()
    fourth = run_ingest(index_dir, ray_cluster, "--source", str(docs))
    assert fourth.summary["files_deleted"] == 1 and fourth.summary["sources"] == {"docs": 1, "more": 1}
    hits = search(index_dir, model, "zebra enclosure door code", top_k=10)
    assert "ORCHID-7741" not in " ".join(h.text for h in hits)
    assert any(h.file == "a.txt" and h.metadata["source"] == "more" for h in search(index_dir, model, "When does the heron station open?"))
    # Another model rebuilds the run's own files from disk and the other source's from its stored text.
    model_folder = packaged_minilm_path()  # same weights, named by folder: a different model id
    rebuilt = run_ingest(index_dir, ray_cluster, "--source", str(docs), RAG_EMBEDDING_MODEL=model_folder)
    s = rebuilt.summary
    assert rebuilt.returncode == 0 and "embedding model changed" in s["full_rebuild_reason"], s
    assert s["sources"] == {"docs": 1, "more": 1} and s["files_indexed"] == 1
    assert VersionedIndex(index_dir).current_info().model_spec.name == model_folder
    assert any(h.metadata["source"] == "more" for h in search(index_dir, model, "When does the heron station open?"))
    # Contextual text turned on: the other source's stored chunks are embedded again with their
    # title in front, so that every vector is of the text the version's BM25 reads.
    on = run_ingest(index_dir, ray_cluster, "--source", str(docs), RAG_EMBEDDING_MODEL=model_folder, RAG_CHUNKING__CONTEXTUAL="true")
    assert on.returncode == 0 and on.summary["full_rebuild_reason"] == "chunking settings changed", on.summary
    for version, contextual in ((rebuilt.summary["index_version"], False), (on.summary["index_version"], True)):
        table, _ = read_parquet_version(VersionedIndex(index_dir).parquet_dir(version))
        rows = [r for r in table.to_pylist() if r["source"] == "more"]
        assert len(rows) > 2 and {r["title"] for r in rows} == {"Heron station notes"}
        texts = [indexed_text(r["text"], title=r["title"]) if contextual else r["text"] for r in rows]
        assert np.allclose([r["embedding"] for r in rows], model.embed_documents(texts), atol=1e-4), version
    named = run_ingest(index_dir, ray_cluster, "--source", str(more), "--source-name", "../escape")
    assert named.returncode == EXIT_USAGE and "source name" in named.summary["error"]


def test_a_staging_folder_adds_documents_keeps_the_absent_and_deletes_only_what_is_named(tmp_path, ray_cluster, model):
    """--keep-absent: the folder holds what to add or replace (uploads whose originals are then
    removed); documents it no longer holds stay until --delete names them; --purge-deleted drops
    the kept versions that hold them, so no rollback brings them back."""
    staging, index_dir = tmp_path / "staging", tmp_path / "index"
    staging.mkdir()
    (staging / "zebra.txt").write_text("The zebra enclosure door code is ORCHID-7741.\n")
    (staging / "falcon.txt").write_text("Project Falcon launches on 12 March with three satellites.\n")
    args = ["--source", str(staging), "--source-name", "uploads", "--keep-absent"]
    first = run_ingest(index_dir, ray_cluster, *args)
    assert first.returncode == 0 and first.summary["sources"] == {"uploads": 2}, first.summary
    for original in staging.iterdir():  # indexed: the originals are not kept
        original.unlink()
    (staging / "heron.txt").write_text("The heron station opens in May.\n")
    second = run_ingest(index_dir, ray_cluster, *args)
    s = second.summary
    assert (s["files_indexed"], s["files_deleted"], s["sources"]) == (1, 0, {"uploads": 3}), s
    assert search(index_dir, model, "zebra enclosure door code")[0].file == "zebra.txt"

    (staging / "heron.txt").unlink()
    third = run_ingest(index_dir, ray_cluster, *args, "--delete", "zebra.txt", "--purge-deleted")
    s = third.summary
    assert third.returncode == 0 and (s["files_deleted"], s["sources"]) == (1, {"uploads": 2}), s
    assert s["versions_purged"] == ["v000001", "v000002"]  # both held zebra.txt
    assert VersionedIndex(index_dir).committed_versions() == [s["index_version"]]
    assert "ORCHID-7741" not in " ".join(h.text for h in search(index_dir, model, "zebra enclosure door code", top_k=10))
    assert {m["file"] for _, m in all_documents(index_dir)} == {"falcon.txt", "heron.txt"}

    mirrored = run_ingest(index_dir, ray_cluster, "--source", str(staging), "--source-name", "uploads", "--delete", "falcon.txt")
    assert mirrored.returncode == EXIT_USAGE and "--keep-absent" in mirrored.summary["error"]


def test_bad_input_is_reported_and_never_fatal(tmp_path, ray_cluster, pdf_dir):
    index_dir = tmp_path / "index"
    missing = run_ingest(index_dir, ray_cluster, "--source", str(tmp_path / "nope"))
    assert missing.returncode == EXIT_USAGE and "source folder not found" in missing.summary["error"]
    assert VersionedIndex(index_dir).current_version() is None

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_ingest(index_dir, ray_cluster, "--source", str(empty))
    assert result.returncode == 0
    assert result.summary["index_version"] is None
    assert (result.summary["files_seen"], result.summary["files_indexed"], result.summary["chunks_total"]) == (0, 0, 0)

    source = tmp_path / "mixed"
    source.mkdir()
    (source / "good.txt").write_text("Lighthouse keepers log the weather every four hours.\n")
    (source / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me and cr\xeape recipes for the staff kitchen.\n".encode("latin-1"))
    (source / "empty.pdf").write_bytes(b"")
    (source / "truncated.pdf").write_bytes((pdf_dir / "pypdf-samples__crazyones-pdfa.pdf").read_bytes()[:1500])
    shutil.copy(pdf_dir / "ocrmypdf__skew.pdf", source / "scan.pdf")
    shutil.copy(pdf_dir / "pdfminer__aes-128.pdf", source / "locked.pdf")
    (source / "huge.txt").write_text("word " * 30_000)  # 150 kB, over the 0.1 MB limit set below
    (source / "notes.docx").write_bytes(b"PK\x03\x04 not really a Word file")
    (source / "notes.xyz").write_text("an unsupported type is ignored, not failed")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the source folder\n")
    (source / "link-out.txt").symlink_to(outside)
    (source / "link-in.txt").symlink_to(source / "good.txt")

    result = run_ingest(index_dir, ray_cluster, "--source", str(source), RAG_INGEST__MAX_FILE_MB="0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    failed = {f["file"]: f["reason"] for f in result.summary["files_failed"]}
    assert set(failed) == {"empty.pdf", "truncated.pdf", "locked.pdf", "huge.txt", "notes.docx"}
    assert failed["empty.pdf"] == "empty file (0 bytes)"
    assert failed["truncated.pdf"].startswith("malformed PDF")
    assert failed["locked.pdf"].startswith("encrypted PDF")
    assert "too large" in failed["huge.txt"]
    assert failed["notes.docx"].startswith("corrupt or truncated .docx")
    manifest = VersionedIndex(index_dir).manifest(result.summary["index_version"])
    assert {e.path for e in manifest.files.values()} == {"good.txt", "latin1.txt", "link-in.txt", "scan.pdf"}  # the scan through OCR
    assert result.summary["files_seen"] == 9 and result.summary["files_indexed"] == 4
    assert result.summary["files_ignored"] >= 2  # notes.xyz and the link out of the folder
    documents = all_documents(index_dir)
    texts = [d for d, m in documents if m["file"] == "latin1.txt"]
    # Latin-1 bytes are detected and decoded, not replaced: the content is not altered.
    assert texts and "Café crème and crêpe recipes for the staff kitchen" in texts[0]
    scan = [m for _, m in documents if m["file"] == "scan.pdf"]
    assert scan and all(m["ocr"] is True and 0 < m["ocr_confidence"] <= 100 and m["page"] == 1 for m in scan)
    assert not [d for d, _ in all_documents(index_dir) if "secret outside" in d]

    # An empty (e.g. unmounted) source never wipes an existing index: here the folder of source "mixed".
    before = VersionedIndex(index_dir).current_version()
    result = run_ingest(index_dir, ray_cluster, "--source", str(empty), "--source-name", "mixed")
    assert result.returncode == 0 and result.summary["files_deleted"] == 0
    assert VersionedIndex(index_dir).current_version() == before


def test_second_concurrent_run_fails_clearly_and_changes_nothing(tmp_path, ray_cluster):
    index_dir = tmp_path / "index"
    holder = VersionedIndex(index_dir)
    with holder.lock(holder="test"):
        result = run_ingest(index_dir, ray_cluster, "--source", str(SAMPLES_DIR))
    assert result.returncode == EXIT_LOCKED
    assert "another ingest run" in result.summary["error"]
    assert holder.current_version() is None and not holder.committed_versions()


@pytest.mark.timeout(2400)  # the session's one ingest of all 118 PDFs (with OCR) is built in this test's setup
def test_killed_run_leaves_current_version_intact_then_all_shared_pdfs_are_accounted_for(interrupted_pdf_ingest, pdf_dir):
    run = interrupted_pdf_ingest  # the session's one ingest of all shared PDFs (tests/integration/conftest.py)
    assert run.first.returncode == 0
    # Killed mid-build: the committed version still serves, complete, and the half-built one is not current.
    assert run.after_kill_current == "v000001"
    assert run.after_kill_partial, "the killed run should have been mid-build"
    assert run.after_kill_vacation_top == "vacation-policy.md"
    assert run.after_kill_documents == run.first.summary["chunks_total"]

    all_pdfs, unreadable, scans, _ = pdf_expectations(pdf_dir)
    s = run.rerun.summary
    index = VersionedIndex(run.index_dir)
    failed = {f["file"]: f["reason"] for f in s["files_failed"]}
    manifest = index.manifest(s["index_version"])
    pdfs_indexed = {e.path for e in manifest.files.values() if e.path in all_pdfs}
    assert s["files_seen"] == len(all_pdfs) + 4
    assert pdfs_indexed | set(failed) == all_pdfs and not pdfs_indexed & set(failed)
    # Every file with text is indexed, encrypted ones included, and the image-only scans through OCR;
    # what fails is what cannot be read at all.
    assert set(failed) == unreadable, failed
    assert scans <= pdfs_indexed and len(scans) == 11
    assert all(reason for reason in failed.values())
    assert s["files_unchanged"] == 4 and s["files_indexed"] == len(pdfs_indexed)
    assert s["chunks_total"] == len(all_documents(run.index_dir)) == manifest.chunk_count
    assert not [v for v in index._all_version_dirs() if not (index.versions_root / v / VERSION_INFO_FILE).exists()]


def test_a_different_model_builds_a_full_new_version(samples_index, ray_cluster):
    index_dir, source = samples_index.index_dir, str(samples_index.source)
    model_folder = packaged_minilm_path()  # same weights, named by folder: a different model id
    result = run_ingest(index_dir, ray_cluster, "--source", source, RAG_EMBEDDING_MODEL=model_folder)
    s = result.summary
    assert result.returncode == 0 and s["index_version"] == "v000002"
    assert "embedding model changed" in s["full_rebuild_reason"]
    assert s["files_indexed"] == 4 and s["files_unchanged"] == 0
    assert s["chunks_deleted"] == s["chunks_added"] == s["chunks_total"]
    info = VersionedIndex(index_dir).current_info()
    assert info.model_spec.name == model_folder and info.model_spec.source == "path"
    assert {m["index_version"] for _, m in all_documents(index_dir)} == {"v000002"}

    unloadable = run_ingest(index_dir, ray_cluster, "--source", source, RAG_EMBEDDING_MODEL="BAAI/bge-base-en-v1.5")
    assert unloadable.returncode == EXIT_USAGE and "local" in unloadable.summary["error"]
    assert VersionedIndex(index_dir).current_version() == "v000002"


def test_ray_job_submit_runs_the_job_on_the_cluster(tmp_path, ray_cluster):
    index_dir = tmp_path / "index"
    process, summary = submit_ingest_job(ray_cluster, "samples", {"RAG_INDEX_DIR": str(index_dir), "RAG_TRIGGERED_BY": "job-submit-test"})
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert summary["files_indexed"] == 4 and summary["files_failed"] == []
    assert VersionedIndex(index_dir).current_version() == summary["index_version"]
    record = json.loads((index_dir / "audit.jsonl").read_text().splitlines()[-1])
    assert record["triggered_by"] == "job-submit-test"


@pytest.fixture()
def chroma_server(tmp_path):
    try:
        server = ChromaServer(tmp_path / "chroma-server").start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server.url
    server.stop()


def test_chroma_server_store_and_rebuild_from_parquet(tmp_path, ray_cluster, chroma_server, model):
    embedded_index, server_index = tmp_path / "embedded", tmp_path / "server"
    source = copy_samples(tmp_path / "docs")
    built = run_ingest(embedded_index, ray_cluster, "--source", str(source))
    assert built.returncode == 0

    # Move the index to the server without re-embedding.
    version_dir = embedded_index / "versions" / built.summary["index_version"]
    moved = run_ingest(
        server_index, None, "--rebuild-from-parquet", str(version_dir), RAG_CHROMA_URL=chroma_server, RAG_INGEST__KEEP_VERSIONS="1"
    )
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert moved.summary["chunks_total"] == built.summary["chunks_total"]
    assert "duration_s" in moved.summary
    query = "How often are production passwords rotated?"
    embedded_hits = search(embedded_index, model, query)
    server_hits = search(server_index, model, query, chroma_url=chroma_server)
    assert [h.chunk_id for h in server_hits] == [h.chunk_id for h in embedded_hits]
    assert server_hits[0].file == "security-faq.txt"

    # Incremental ingest against the server; old versions' collections are dropped beyond keep_versions.
    (source / "security-faq.txt").unlink()
    incremental = run_ingest(
        server_index, ray_cluster, "--source", str(source), RAG_CHROMA_URL=chroma_server, RAG_INGEST__KEEP_VERSIONS="1"
    )
    assert incremental.returncode == 0 and incremental.summary["files_deleted"] == 1
    assert all(h.file != "security-faq.txt" for h in search(server_index, model, query, top_k=10, chroma_url=chroma_server))
    import chromadb

    port = int(chroma_server.rsplit(":", 1)[1])
    names = {c.name for c in chromadb.HttpClient(host="127.0.0.1", port=port).list_collections()}
    assert names == {f"rag-{incremental.summary['index_version']}", "rag-meta"}
    assert not (tmp_path / "server" / "versions" / "v000001" / "chroma").exists()


def test_an_open_reader_keeps_serving_while_a_new_version_is_written(samples_index, ray_cluster, model):
    source, index_dir = samples_index.source, samples_index.index_dir
    reader = IndexReader(VersionedIndex(index_dir))
    reader.refresh()
    old_query, new_query = model.embed_queries(["How fast must the on-call engineer acknowledge a page?", "kestrel bird survey team"])
    (source / "kestrel.txt").write_text("The kestrel bird survey team counts nests every Monday at 06:00.\n")

    writer = subprocess.Popen(
        [sys.executable, "-m", "ingest_jobs.index", "--source", str(source)],
        cwd=REPO_ROOT,
        env=ingest_env(index_dir, ray_cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    answered = 0
    while writer.poll() is None:  # queries during the other process's write: never an error
        assert reader.search(old_query, 3)[0].file == "oncall-runbook.md"
        assert reader.search(new_query, 1)[0].file != "kestrel.txt"  # still the version it opened
        answered += 1
        time.sleep(0.05)
    assert writer.returncode == 0 and answered > 0
    assert reader.info.version == "v000001"
    assert reader.refresh() is True and reader.info.version == "v000002"
    assert reader.search(new_query, 1)[0].file == "kestrel.txt"
    assert reader.search(old_query, 1)[0].file == "oncall-runbook.md"
    reader.close()


def test_embedding_gpus_auto_follow_the_cluster(ray_cluster):
    import ray

    from ingest_jobs.runner import embed_gpus_per_actor

    assert ray.cluster_resources().get("GPU", 0) == 0
    assert embed_gpus_per_actor("auto") == 0.0  # no GPU in this cluster: embed on CPUs
    assert embed_gpus_per_actor(0.5) == 0.5 and embed_gpus_per_actor(1) == 1.0  # explicit: asks Ray (and its autoscaler)
