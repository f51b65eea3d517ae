"""The server store (ChromaDB server mode) as readers on other nodes see it: the pointer, version
info and rows come from the server alone, a reader's cached pointer expires, and a server outage
keeps the last pointer instead of failing every request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rag_core.embedding import EmbeddingModel
from rag_core.index_store import IndexStoreError, VersionedIndex
from rag_core.settings import RetrievalSettings
from serve_app.retrieval import HybridRetriever
from serve_app.retrieval_request import RetrievalRequest
from tests.local_cluster import ChromaServer
from tests.unit.index_builder import build_version


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel.from_setting("auto")


@pytest.fixture()
def chroma(tmp_path):
    server = ChromaServer(tmp_path / "chroma").start()
    yield server
    server.stop()


def publish(index: VersionedIndex, model: EmbeddingModel, texts: dict[str, str]) -> str:
    """A committed, current version of one chunk per file, and its completed-ingest audit record."""
    with index.lock():
        info = build_version(index, model, [(f"{name}.txt", 1, text, {}) for name, text in texts.items()])
        index.record(
            {
                "event": "ingest",
                "status": "completed",
                "finished_at": "2026-11-25T00:00:00+00:00",
                "summary": {"chunks_added": len(texts), "duration_s": 2.0},
                "files": [{"file": f"{name}.txt", "action": "added"} for name in texts],
            }
        )
    return info.version


def test_a_reader_on_another_node_needs_only_the_server(tmp_path: Path, chroma: ChromaServer, model: EmbeddingModel):
    writer = VersionedIndex(tmp_path / "writer", chroma.url)
    version = publish(writer, model, {"a": "alpha kestrel nests", "b": "beta river survey"})
    reader = VersionedIndex(tmp_path / "elsewhere", chroma.url)  # nothing of the writer's on this disk
    assert reader.current_version() == version and reader.info(version).chunks_total == 2
    ids, texts, metadatas = reader.chunk_rows(version)
    assert sorted(ids) == ["a.txt#0", "b.txt#0"] and {m["file"] for m in metadatas} == {"a.txt", "b.txt"}
    assert reader.last_completed_ingest()["file_actions"] == {"added": 2}  # counts, not the file list

    retriever = HybridRetriever(reader, RetrievalSettings())
    assert retriever.maybe_reload()
    chunks, info = retriever.retrieve(
        RetrievalRequest.resolve(retriever.settings, query="kestrel nests", vector=model.embed_queries(["kestrel nests"])[0], top_k=1)
    )
    assert info.version == version and chunks[0].chunk_id == "a.txt#0"
    lexical, _ = retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query="river", top_k=1, mode="lexical"))
    assert lexical[0].chunk_id == "b.txt#0"
    assert retriever.status()["last_ingest"]["files"] == {"added": 2}
    assert not (tmp_path / "elsewhere").exists()


def test_the_pointer_cache_expires_and_the_swap_follows(tmp_path: Path, chroma: ChromaServer, model: EmbeddingModel):
    writer = VersionedIndex(tmp_path / "writer", chroma.url)
    first = publish(writer, model, {"a": "alpha"})
    # A lifetime that outlasts publishing a version even on a loaded machine (0.5 s did not).
    reader = VersionedIndex(tmp_path / "reader", chroma.url, pointer_cache_s=5)
    assert reader.current_version() == first
    read_at = time.monotonic()
    second = publish(writer, model, {"a": "alpha", "c": "gamma"})
    assert time.monotonic() - read_at < 5 and reader.current_version() == first  # within the cache lifetime
    time.sleep(max(0.0, read_at + 5.2 - time.monotonic()))
    assert reader.current_version() == second


def test_an_unreachable_server_keeps_the_last_pointer(tmp_path: Path, chroma: ChromaServer, model: EmbeddingModel):
    version = publish(VersionedIndex(tmp_path / "writer", chroma.url), model, {"a": "alpha"})
    reader = VersionedIndex(tmp_path / "reader", chroma.url, pointer_cache_s=0)
    assert reader.current_version() == version
    chroma.stop()
    assert reader.current_version() == version  # the ingress keeps its cache key
    cold = VersionedIndex(tmp_path / "cold", chroma.url)
    with pytest.raises(IndexStoreError, match="cannot read the index pointer"):
        cold.current_version()


def test_dropped_versions_leave_the_catalog_first(tmp_path: Path, chroma: ChromaServer, model: EmbeddingModel):
    index = VersionedIndex(tmp_path / "writer", chroma.url)
    first = publish(index, model, {"a": "alpha"})
    second = publish(index, model, {"a": "alpha", "b": "beta"})
    with pytest.raises(IndexStoreError, match="current"):
        index.discard(second)
    index.discard(first)
    with pytest.raises(IndexStoreError, match="not committed"):
        VersionedIndex(tmp_path / "other", chroma.url).info(first)
    with pytest.raises(IndexStoreError):
        index.set_current(first)
    assert index.info(second).chunks_total == 2


def test_a_writer_that_lost_its_disk_never_reuses_a_served_version(tmp_path: Path, chroma: ChromaServer, model: EmbeddingModel):
    served = publish(VersionedIndex(tmp_path / "old-head", chroma.url), model, {"a": "alpha", "b": "beta"})
    new_head = VersionedIndex(tmp_path / "new-head", chroma.url)  # a replaced head: empty index_dir
    assert int(new_head.next_version()[1:]) == int(served[1:]) + 1
    rebuilt = publish(new_head, model, {"c": "gamma"})
    assert rebuilt != served and new_head.current_version() == rebuilt
    assert VersionedIndex(tmp_path / "reader", chroma.url).info(served).chunks_total == 2  # kept for rollback
    # Garbage collection also drops versions only the server still knew about.
    with new_head.lock():
        assert new_head.garbage_collect(keep=1) == [served]
    assert new_head.committed_versions() == [rebuilt]
