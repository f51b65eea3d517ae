"""The versioned index on a real embedded ChromaDB in tmp_path, with synthetic 8-d unit vectors;
the rollback and audit CLIs on top of it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_jobs import audit as audit_cli
from ingest_jobs import rollback as rollback_cli
from rag_core.embedding import EmbeddingModelSpec
from rag_core.index_reader import IndexReader
from rag_core.index_store import (
    IndexLockBusy,
    IndexStoreError,
    VersionedIndex,
    VersionInfo,
    chunk_schema,
    manifest_from_rows,
    read_parquet_version,
)
from rag_core.manifest import Manifest

DIM = 8
SPEC = EmbeddingModelSpec("test/synthetic-8d", "hub", DIM, "q: ")
CHUNKING = {"chunk_size": 64, "chunk_overlap": 8, "separators": ["\n", ""]}
REPO_ROOT = Path(__file__).resolve().parents[2]


def unit(*weights: float) -> list[float]:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return (vector / np.linalg.norm(vector)).tolist()


def basis(i: int) -> list[float]:
    return unit(*([0.0] * i + [1.0]))


def chunk_rows(version: str, file: str, vectors: list[list[float]], metadata: dict | None = None) -> pa.Table:
    """Rows of chunk_schema(DIM) for one file: chunk i has text '<file> chunk i' and vectors[i]."""
    rows = [
        {
            "chunk_id": f"{file}#{i}",
            "file": file,
            "page": 1 + i // 2,
            "chunk_index": i,
            "char_start": 10 * i,
            "char_end": 10 * i + 9,
            "text": f"{file} chunk {i}",
            "file_sha256": f"sha-of-{file}",
            "sidecar_sha256": "side" if metadata else "",
            "file_size": 100 + len(file),
            "ingested_at": "2024-06-01T12:00:00+00:00",
            "index_version": version,
            "metadata": json.dumps(metadata or {}),
            "embedding": vector,
        }
        for i, vector in enumerate(vectors)
    ]
    return pa.Table.from_pylist(rows, schema=chunk_schema(DIM))


def build_version(
    index: VersionedIndex, files: dict[str, list[list[float]]], make_current: bool = True, metadata: dict | None = None
) -> VersionInfo:
    builder = index.begin(SPEC, CHUNKING, parent=index.current_version())
    tables = [chunk_rows(builder.version, path, vectors, metadata) for path, vectors in files.items()]
    for table in tables:
        builder.add(table)
    info = builder.commit(manifest_from_rows(pa.concat_tables(tables)) if tables else Manifest())
    if make_current:
        index.set_current(info.version)
    return info


@pytest.fixture
def index(tmp_path: Path) -> VersionedIndex:
    return VersionedIndex(tmp_path / "index")


@pytest.fixture
def reader(index: VersionedIndex):
    opened = IndexReader(index)
    yield opened
    opened.close()


FIRST = {"a.txt": [basis(0), basis(1), basis(2)], "docs/b.md": [basis(3), unit(1, 1)]}


# -- build, commit, point ---------------------------------------------------------------------
def test_commit_then_set_current_publishes_the_version(index: VersionedIndex) -> None:
    assert index.current_version() is None and index.current_info() is None
    info = build_version(index, FIRST, make_current=False)

    assert info.version == "v000001"
    assert index.current_version() is None  # committed, not yet current
    index.set_current("v000001")
    assert index.current_version() == "v000001"
    assert index.current_info() == info == index.info("v000001")
    assert (info.chunks_total, info.files_total) == (5, 2)
    assert info.embedding_model == SPEC.to_dict() and info.model_spec == SPEC
    assert info.chunking == CHUNKING
    assert (info.store, info.collection, info.parent_version) == ("embedded", "chunks", None)
    assert index.committed_versions() == ["v000001"]

    manifest = index.manifest("v000001")
    assert set(manifest.files) == {"a.txt", "docs/b.md"}
    assert manifest.files["a.txt"].chunk_ids == ("a.txt#0", "a.txt#1", "a.txt#2")
    assert manifest.files["a.txt"].sha256 == "sha-of-a.txt"
    assert manifest.chunk_count == 5


def test_next_version_records_its_parent(index: VersionedIndex) -> None:
    build_version(index, FIRST)
    second = build_version(index, {"c.txt": [basis(4)]})
    assert (second.version, second.parent_version) == ("v000002", "v000001")
    assert index.committed_versions() == ["v000001", "v000002"]


def test_empty_version_can_be_committed_and_read(index: VersionedIndex) -> None:
    info = build_version(index, {})
    assert info.chunks_total == 0
    table, _ = read_parquet_version(index.parquet_dir(info.version))
    assert table.num_rows == 0 and table.schema.names == chunk_schema(DIM).names


# -- reading ----------------------------------------------------------------------------------
def test_search_returns_the_nearest_chunk_first_with_cosine_score(index: VersionedIndex, reader: IndexReader) -> None:
    build_version(index, FIRST)

    hits = reader.search(basis(1), top_k=3)

    assert hits[0].chunk_id == "a.txt#1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].file, hits[0].page, hits[0].text) == ("a.txt", 1, "a.txt chunk 1")
    assert hits[0].metadata["chunk_index"] == 1 and hits[0].metadata["index_version"] == "v000001"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[1] < 0.99

    # An exact stored vector that is not a basis vector.
    between = reader.search(unit(1, 1), top_k=1)[0]
    assert between.chunk_id == "docs/b.md#1" and between.score == pytest.approx(1.0, abs=1e-5)


def test_search_honours_a_where_filter(index: VersionedIndex, reader: IndexReader) -> None:
    build_version(index, FIRST)

    hits = reader.search(basis(1), top_k=5, where={"file": "docs/b.md"})
    assert {h.file for h in hits} == {"docs/b.md"} and len(hits) == 2
    assert sorted(reader.chunk_ids({"file": "a.txt"})) == ["a.txt#0", "a.txt#1", "a.txt#2"]


def test_sidecar_metadata_is_stored_and_filterable(index: VersionedIndex, reader: IndexReader) -> None:
    builder = index.begin(SPEC, CHUNKING, parent=None)
    tagged = chunk_rows(builder.version, "tagged.txt", [basis(0)], metadata={"team": "legal", "tags": ["x", "y"]})
    plain = chunk_rows(builder.version, "plain.txt", [basis(0)])
    builder.add(tagged)
    builder.add(plain)
    index.set_current(builder.commit(manifest_from_rows(pa.concat_tables([tagged, plain]))).version)

    assert {h.file for h in reader.search(basis(0), top_k=5)} == {"tagged.txt", "plain.txt"}
    (hit,) = reader.search(basis(0), top_k=5, where={"team": "legal"})
    assert hit.file == "tagged.txt" and hit.metadata["tags"] == ["x", "y"]
    assert [h.file for h in reader.search(basis(0), top_k=5, where={"tags": {"$contains": "y"}})] == ["tagged.txt"]


def test_reader_without_any_version_raises(reader: IndexReader) -> None:
    with pytest.raises(IndexStoreError, match="no index"):
        reader.refresh()


def test_reader_follows_the_pointer_and_ignores_unpublished_builds(index: VersionedIndex, reader: IndexReader) -> None:
    build_version(index, FIRST)
    assert reader.refresh() is True
    assert reader.refresh() is False
    assert reader.count() == 5

    second = build_version(index, {"new.txt": [basis(5), basis(6)]})
    assert reader.refresh() is True
    assert reader.info.version == second.version
    assert reader.count() == 2
    assert reader.search(basis(5), top_k=1)[0].chunk_id == "new.txt#0"

    # A build in progress, then aborted: never visible.
    builder = index.begin(SPEC, CHUNKING, parent=second.version)
    builder.add(chunk_rows(builder.version, "draft.txt", [basis(7)]))
    assert reader.refresh() is False
    assert "draft.txt#0" not in [h.chunk_id for h in reader.search(basis(7), top_k=5)]
    builder.abort()
    assert not (index.versions_root / builder.version).exists()
    assert index.current_version() == second.version
    assert reader.refresh() is False and reader.count() == 2


# -- refusals ---------------------------------------------------------------------------------
def test_commit_refuses_a_manifest_that_disagrees_with_the_rows(index: VersionedIndex) -> None:
    builder = index.begin(SPEC, CHUNKING, parent=None)
    table = chunk_rows(builder.version, "a.txt", [basis(0), basis(1)])
    builder.add(table)
    short_manifest = manifest_from_rows(table.slice(0, 1))

    with pytest.raises(IndexStoreError, match="not committing"):
        builder.commit(short_manifest)
    assert index.committed_versions() == []
    with pytest.raises(IndexStoreError):
        index.info(builder.version)
    builder.abort()


def test_set_current_refuses_uncommitted_or_unknown_versions(index: VersionedIndex) -> None:
    build_version(index, FIRST)
    builder = index.begin(SPEC, CHUNKING, parent="v000001")
    builder.add(chunk_rows(builder.version, "x.txt", [basis(0)]))

    with pytest.raises(IndexStoreError, match="never committed"):
        index.set_current(builder.version)
    with pytest.raises(IndexStoreError):
        index.set_current("v000099")
    assert index.current_version() == "v000001"
    builder.abort()


def test_current_version_cannot_be_discarded(index: VersionedIndex) -> None:
    build_version(index, FIRST)
    with pytest.raises(IndexStoreError, match="refusing"):
        index.discard("v000001")
    assert index.committed_versions() == ["v000001"]


# -- garbage collection -----------------------------------------------------------------------
def test_garbage_collect_keeps_newest_two_and_current_and_drops_crashed_builds(index: VersionedIndex) -> None:
    for i in range(4):
        build_version(index, {f"f{i}.txt": [basis(i)]})
    index.set_current("v000001")  # rolled back to the oldest
    crashed = index.versions_root / "v000005"  # a build killed before commit or abort
    (crashed / "chunks").mkdir(parents=True)

    removed = index.garbage_collect(keep=2)

    assert removed == ["v000002", "v000005"]
    assert index.committed_versions() == ["v000001", "v000003", "v000004"]
    assert not crashed.exists() and not (index.versions_root / "v000002").exists()
    assert index.current_version() == "v000001"
    assert index.garbage_collect(keep=2) == []


def test_garbage_collect_never_removes_the_current_version(index: VersionedIndex) -> None:
    for i in range(3):
        build_version(index, {f"f{i}.txt": [basis(i)]})
    index.set_current("v000002")
    assert index.garbage_collect(keep=1) == ["v000001"]
    assert index.committed_versions() == ["v000002", "v000003"]


def test_garbage_collect_keep_zero_keeps_only_the_current_version(index: VersionedIndex) -> None:
    for i in range(3):
        build_version(index, {f"f{i}.txt": [basis(i)]})
    assert index.garbage_collect(keep=0) == ["v000001", "v000002"]


# -- writer lock ------------------------------------------------------------------------------
def test_second_writer_gets_index_lock_busy(index: VersionedIndex) -> None:
    other = VersionedIndex(index.index_dir)
    with index.lock(holder="ingest by tester"):
        with pytest.raises(IndexLockBusy, match="ingest by tester"):
            with other.lock(timeout_s=0):
                pytest.fail("the lock was granted twice")
    with other.lock(timeout_s=0):  # free again once released
        pass


def test_lock_held_by_another_process_is_busy(index: VersionedIndex) -> None:
    holder = textwrap.dedent(
        f"""
        import sys
        from rag_core.index_store import VersionedIndex
        with VersionedIndex({str(index.index_dir)!r}).lock(holder="other process"):
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockBusy, match="other process"):
            with index.lock(timeout_s=0):
                pytest.fail("the lock was granted while another process holds it")
    finally:
        process.communicate("release\n", timeout=30)
    assert process.returncode == 0
    with index.lock(timeout_s=0):
        pass


# -- Parquet copy -----------------------------------------------------------------------------
def test_parquet_copy_round_trips_rows_model_and_manifest(index: VersionedIndex) -> None:
    info = build_version(index, FIRST, metadata={"lang": "en"})
    expected = pa.concat_tables(chunk_rows(info.version, path, vectors, {"lang": "en"}) for path, vectors in FIRST.items())

    table, recorded = read_parquet_version(index.parquet_dir(info.version))

    assert table.to_pylist() == expected.to_pylist()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert recorded == {"embedding_model": SPEC.to_dict(), "chunking": CHUNKING, "version": info.version}
    assert EmbeddingModelSpec.from_dict(recorded["embedding_model"]) == SPEC
    assert manifest_from_rows(table) == index.manifest(info.version)


def test_manifest_from_rows_orders_chunks_by_index() -> None:
    table = chunk_rows("v000003", "a.txt", [basis(0), basis(1), basis(2)])
    shuffled = table.take([2, 0, 1])
    assert manifest_from_rows(shuffled).files["a.txt"].chunk_ids == ("a.txt#0", "a.txt#1", "a.txt#2")
    assert manifest_from_rows(shuffled).files["a.txt"].index_version == "v000003"


def test_read_parquet_version_rejects_missing_or_foreign_data(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="no Parquet files"):
        read_parquet_version(tmp_path)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-00000.parquet")
    with pytest.raises(IndexStoreError, match="not written by this project"):
        read_parquet_version(tmp_path)


# -- rollback and audit CLIs ------------------------------------------------------------------
@pytest.fixture
def cli_index(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> VersionedIndex:
    """Two committed versions, v000002 current, found by the CLIs through RAG_INDEX_DIR."""
    index_dir = clean_rag_env / "cli-index"
    monkeypatch.setenv("RAG_INDEX_DIR", str(index_dir))
    monkeypatch.setenv("RAG_TRIGGERED_BY", "unit-tester")
    index = VersionedIndex(index_dir)
    build_version(index, FIRST)
    build_version(index, {"c.txt": [basis(4)]})
    return index


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_rollback_to_a_version_moves_the_pointer_and_audits(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    assert rollback_cli.main(["--to", "v000001"]) == 0

    assert last_json_line(capsys.readouterr().out) == {"index_version": "v000001", "previous_version": "v000002"}
    assert cli_index.current_version() == "v000001"
    (record,) = list(cli_index.audit.records())
    assert record["event"] == "rollback" and record["status"] == "completed"
    assert (record["index_version"], record["previous_version"]) == ("v000001", "v000002")
    assert record["triggered_by"] == "unit-tester"

    assert audit_cli.main([]) == 0
    line = capsys.readouterr().out.strip()
    assert "rollback" in line and "completed" in line
    assert "version=v000001" in line and "by=unit-tester" in line

    assert audit_cli.main(["--json"]) == 0
    assert last_json_line(capsys.readouterr().out) == record


def test_rollback_without_target_goes_to_the_previous_version(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    assert rollback_cli.main([]) == 0
    assert cli_index.current_version() == "v000001"
    assert rollback_cli.main([]) == 2  # nothing older than v000001
    assert "no kept version older" in last_json_line(capsys.readouterr().out)["error"]
    assert cli_index.current_version() == "v000001"


def test_rollback_to_an_unknown_version_changes_nothing(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    assert rollback_cli.main(["--to", "v000042"]) == 2
    assert "v000042" in last_json_line(capsys.readouterr().out)["error"]
    assert cli_index.current_version() == "v000002"
    assert list(cli_index.audit.records()) == []


def test_rollback_while_the_index_is_locked_exits_75(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    with VersionedIndex(cli_index.index_dir).lock(holder="busy ingest"):
        assert rollback_cli.main(["--to", "v000001"]) == 75
    assert "busy ingest" in last_json_line(capsys.readouterr().out)["error"]
    assert cli_index.current_version() == "v000002"


def test_rollback_list_marks_the_current_version(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    assert rollback_cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:10] for line in lines] == ["  v000001 ", "* v000002 "]
    assert "chunks=5 files=2 model=test/synthetic-8d" in lines[0]
    assert cli_index.current_version() == "v000002"


def test_audit_cli_with_no_records(cli_index: VersionedIndex, capsys: pytest.CaptureFixture) -> None:
    assert audit_cli.main([]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no audit records" in captured.err


def test_audit_format_lists_counts_and_failed_files() -> None:
    record = {
        "event": "ingest",
        "status": "completed",
        "finished_at": "2024-06-01T12:00:00+00:00",
        "index_version": "v000003",
        "triggered_by": "me@host",
        "source": "/data",
        "summary": {"files_indexed": 2, "files_unchanged": 5, "files_deleted": 1},
        "files": [{"file": "a.txt", "action": "added"}, {"file": "bad.pdf", "action": "failed", "reason": "malformed PDF: x"}],
    }
    line = audit_cli.format_record(record, with_files=True)
    assert "[indexed 2, unchanged 5, deleted 1, failed 1]" in line
    assert "bad.pdf (malformed PDF: x)" in line and "added    a.txt" in line
