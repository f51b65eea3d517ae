"""The server store (ChromaDB server mode) as readers on other nodes see it: the pointer, version
info and rows come from the server alone, a reader's cached pointer expires, and a server outage
keeps the last pointer instead of failing every request."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from rag_core.embedding import EmbeddingModelSpec
from rag_core.index_store import IndexStoreError, VersionedIndex, chunk_schema
from rag_core.manifest import Manifest, ManifestEntry
from rag_core.settings import RetrievalSettings
from serve_app.retrieval import HybridRetriever
from tests.local_cluster import ChromaServer

SPEC = EmbeddingModelSpec(name="test/3d", source="test", dimension=3, query_prefix="")


@pytest.fixture()
def chroma(tmp_path):
    server = ChromaServer(tmp_path / "chroma").start()
    yield server
    server.stop()


def rows(version: str, texts: dict[str, str]) -> pa.Table:
    vectors = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    records = [
        {"chunk_id": f"{name}-0", "file": f"{name}.txt", "page": 1, "chunk_index": 0, "char_start": 0, "char_end": len(text),
         "text": text, "file_sha256": name * 8, "sidecar_sha256": "", "file_size": len(text), "ingested_at": "2026-11-25T00:00:00+00:00",
         "index_version": version, "metadata": "{}", "embedding": vectors[name]}
        for name, text in texts.items()
    ]
    return pa.Table.from_pylist(records, schema=chunk_schema(3))


def publish(index: VersionedIndex, texts: dict[str, str]) -> str:
    with index.lock():
        builder = index.begin(SPEC, {"chunk_size": 512}, parent=index.current_version())
        builder.add(rows(builder.version, texts))
        manifest = Manifest({f"{n}.txt": ManifestEntry(n * 8, "", len(t), (f"{n}-0",), builder.version) for n, t in texts.items()})
        info = builder.commit(manifest)
        index.set_current(info.version)
        index.record({"event": "ingest", "status": "completed", "finished_at": "2026-11-25T00:00:00+00:00",
                      "summary": {"chunks_added": len(texts), "duration_s": 2.0},
                      "files": [{"file": f"{n}.txt", "action": "added"} for n in texts]})
    return info.version


def test_a_reader_on_another_node_needs_only_the_server(tmp_path: Path, chroma: ChromaServer):
    writer = VersionedIndex(tmp_path / "writer", chroma.url)
    version = publish(writer, {"a": "alpha kestrel nests", "b": "beta river survey"})
    reader = VersionedIndex(tmp_path / "elsewhere", chroma.url)  # nothing of the writer's on this disk
    assert reader.current_version() == version and reader.info(version).chunks_total == 2
    ids, texts, metadatas = reader.chunk_rows(version)
    assert sorted(ids) == ["a-0", "b-0"] and {m["file"] for m in metadatas} == {"a.txt", "b.txt"}
    assert reader.last_completed_ingest()["file_actions"] == {"added": 2}  # counts, not the file list

    retriever = HybridRetriever(reader, RetrievalSettings())
    assert retriever.maybe_reload()
    chunks, info = retriever.retrieve("kestrel nests", [1.0, 0.0, 0.0], top_k=1)
    assert info.version == version and chunks[0].chunk_id == "a-0"
    lexical, _ = retriever.retrieve("river", None, top_k=1, mode="lexical")
    assert lexical[0].chunk_id == "b-0"
    assert retriever.status()["last_ingest"]["files"] == {"added": 2}
    assert not (tmp_path / "elsewhere").exists()


def test_the_pointer_cache_expires_and_the_swap_follows(tmp_path: Path, chroma: ChromaServer):
    writer = VersionedIndex(tmp_path / "writer", chroma.url)
    first = publish(writer, {"a": "alpha"})
    reader = VersionedIndex(tmp_path / "reader", chroma.url, pointer_cache_s=0.5)
    assert reader.current_version() == first
    second = publish(writer, {"a": "alpha", "c": "gamma"})
    assert reader.current_version() == first  # within the cache lifetime
    time.sleep(0.6)
    assert reader.current_version() == second


def test_an_unreachable_server_keeps_the_last_pointer(tmp_path: Path, chroma: ChromaServer):
    version = publish(VersionedIndex(tmp_path / "writer", chroma.url), {"a": "alpha"})
    reader = VersionedIndex(tmp_path / "reader", chroma.url, pointer_cache_s=0)
    assert reader.current_version() == version
    chroma.stop()
    assert reader.current_version() == version  # the ingress keeps its cache key
    cold = VersionedIndex(tmp_path / "cold", chroma.url)
    with pytest.raises(IndexStoreError, match="cannot read the index pointer"):
        cold.current_version()


def test_dropped_versions_leave_the_catalog_first(tmp_path: Path, chroma: ChromaServer):
    index = VersionedIndex(tmp_path / "writer", chroma.url)
    first = publish(index, {"a": "alpha"})
    second = publish(index, {"a": "alpha", "b": "beta"})
    with pytest.raises(IndexStoreError, match="current"):
        index.discard(second)
    index.discard(first)
    with pytest.raises(IndexStoreError, match="not committed"):
        VersionedIndex(tmp_path / "other", chroma.url).info(first)
    with pytest.raises(IndexStoreError):
        index.set_current(first)
    assert index.info(second).chunks_total == 2


def test_a_writer_that_lost_its_disk_never_reuses_a_served_version(tmp_path: Path, chroma: ChromaServer):
    served = publish(VersionedIndex(tmp_path / "old-head", chroma.url), {"a": "alpha", "b": "beta"})
    new_head = VersionedIndex(tmp_path / "new-head", chroma.url)  # a replaced head: empty index_dir
    assert int(new_head.next_version()[1:]) == int(served[1:]) + 1
    rebuilt = publish(new_head, {"c": "gamma"})
    assert rebuilt != served and new_head.current_version() == rebuilt
    assert VersionedIndex(tmp_path / "reader", chroma.url).info(served).chunks_total == 2  # kept for rollback
    # Garbage collection also drops versions only the server still knew about.
    with new_head.lock():
        assert new_head.garbage_collect(keep=1) == [served]
    assert new_head.committed_versions() == [rebuilt]
