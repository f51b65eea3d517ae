"""The pipeline stages as plain callables (no Ray): ParseAndChunk and EmbedChunks; how files are
grouped into blocks, and how a run's CPU requests are sized to the cluster."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ingest_jobs.pipeline import (
    MIN_CPU_SHARE,
    CpuPlan,
    EmbedChunks,
    NoCpuToSpare,
    ParseAndChunk,
    ParseConfig,
    current_node_id,
    file_row,
    files_per_block,
    group_files,
    make_chunk_id,
    node_cores,
    pack_block,
    parse_and_chunk_batch,
    parsed_schema,
    plan_cpus,
    unpack_blocks,
)
from rag_core.embedding import PACKAGED_MINILM, SOURCE_PACKAGE, EmbeddingModelSpec
from rag_core.index_reader import IndexReader
from rag_core.index_store import VersionedIndex, chunk_schema, manifest_from_rows

PACKAGED_SPEC = EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "")
CONFIG = ParseConfig(
    passwords=(),
    chunk_size=200,
    chunk_overlap=20,
    separators=("\n\n", "\n", ". ", " ", ""),
    ingested_at="2024-06-01T12:00:00+00:00",
    index_version="v000007",
)
GOOD_TEXT = "\n\n".join(f"Paragraph {i} talks about topic number {i}. " + "It has a few sentences of filler text. " * 4 for i in range(6))
MALFORMED_PDF = "pdfminer__simple1.pdf"
TEXT_PDF = "pypdf-samples__pdflatex-4-pages.pdf"
ENCRYPTED_PDF, ENCRYPTED_PASSWORD = "pdfplumber__password-example.pdf", "test"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_table(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows))


def rows_for(table: pa.Table, path: str) -> list[dict]:
    return [row for row in table.to_pylist() if row["file"] == path]


@pytest.fixture(scope="module")
def embedder() -> EmbedChunks:
    return EmbedChunks(PACKAGED_SPEC.to_dict(), device="cpu", batch_size=16)


@pytest.fixture
def mixed_files(shared_pdf_dir: Path) -> pa.Table:
    return files_table(
        file_row("docs/good.txt", GOOD_TEXT.encode(), "sidecar-hash", {"team": "search", "year": 2024}),
        file_row("docs/empty.txt", b"", "", {}),
        file_row("pdfs/bad.pdf", (shared_pdf_dir / MALFORMED_PDF).read_bytes(), "", {"kind": "broken"}),
    )


# -- ParseAndChunk ----------------------------------------------------------------------------
def test_good_file_becomes_chunk_rows_and_each_bad_file_one_failure_row(mixed_files: pa.Table, shared_pdf_dir: Path) -> None:
    out = ParseAndChunk(CONFIG)(mixed_files)

    assert out.schema == parsed_schema()
    good = rows_for(out, "docs/good.txt")
    assert len(good) > 3 and all(row["error"] == "" for row in good)

    (empty,) = rows_for(out, "docs/empty.txt")
    assert empty["error"] == "empty file (0 bytes)"
    (bad,) = rows_for(out, "pdfs/bad.pdf")
    assert bad["error"].startswith("malformed PDF")
    for failure in (empty, bad):
        assert (failure["chunk_id"], failure["chunk_index"], failure["text"]) == ("", -1, "")
    assert json.loads(bad["metadata"]) == {"kind": "broken"}
    assert bad["file_sha256"] == sha256((shared_pdf_dir / MALFORMED_PDF).read_bytes())
    assert empty["file_sha256"] == sha256(b"") and empty["file_size"] == 0


def test_chunk_rows_carry_offsets_hashes_and_run_metadata(mixed_files: pa.Table) -> None:
    good = rows_for(ParseAndChunk(CONFIG)(mixed_files), "docs/good.txt")
    data = GOOD_TEXT.encode()

    assert [row["chunk_index"] for row in good] == list(range(len(good)))
    for row in good:
        assert GOOD_TEXT[row["char_start"] : row["char_end"]] == row["text"]
        assert 0 < len(row["text"]) <= CONFIG.chunk_size
        assert row["page"] == 1
        assert row["file_sha256"] == sha256(data)
        assert row["file_size"] == len(data)
        assert row["sidecar_sha256"] == "sidecar-hash"
        assert (row["ingested_at"], row["index_version"]) == (CONFIG.ingested_at, CONFIG.index_version)
        assert json.loads(row["metadata"]) == {"team": "search", "year": 2024}


def test_chunk_ids_are_deterministic_content_path_and_position(mixed_files: pa.Table) -> None:
    first = ParseAndChunk(CONFIG)(mixed_files)
    second = ParseAndChunk(CONFIG)(mixed_files)
    assert first.equals(second)

    good = rows_for(first, "docs/good.txt")
    expected = [make_chunk_id(sha256(GOOD_TEXT.encode()), "docs/good.txt", row["chunk_index"]) for row in good]
    assert [row["chunk_id"] for row in good] == expected
    assert len(set(expected)) == len(expected)


def test_make_chunk_id_format() -> None:
    file_sha = "ab" * 32
    chunk_id = make_chunk_id(file_sha, "a/b.txt", 7)
    assert chunk_id == f"{file_sha[:32]}-{hashlib.sha1(b'a/b.txt').hexdigest()[:8]}-00007"
    assert make_chunk_id(file_sha, "a/b.txt", 7) == chunk_id
    assert make_chunk_id(file_sha, "a/c.txt", 7) != chunk_id
    assert make_chunk_id("cd" * 32, "a/b.txt", 7) != chunk_id


def test_one_path_in_two_sources_gets_different_chunk_ids_and_unnamed_sources_keep_theirs() -> None:
    sha = "ab" * 32
    assert make_chunk_id(sha, "a.txt", 0, "docs") != make_chunk_id(sha, "a.txt", 0, "more")
    assert make_chunk_id(sha, "a.txt", 0, "") == make_chunk_id(sha, "a.txt", 0)  # indexes from before sources were named


def test_identical_files_at_two_paths_get_different_chunk_ids() -> None:
    data = GOOD_TEXT.encode()
    out = ParseAndChunk(CONFIG)(files_table(file_row("a/copy.txt", data, "", {}), file_row("b/copy.txt", data, "", {})))

    a, b = rows_for(out, "a/copy.txt"), rows_for(out, "b/copy.txt")
    assert [r["text"] for r in a] == [r["text"] for r in b]
    assert {r["file_sha256"] for r in a + b} == {sha256(data)}
    assert not {r["chunk_id"] for r in a} & {r["chunk_id"] for r in b}


def test_pdf_pages_are_kept_in_chunk_rows(shared_pdf_dir: Path) -> None:
    out = ParseAndChunk(CONFIG)(files_table(file_row("paper.pdf", (shared_pdf_dir / TEXT_PDF).read_bytes(), "", {})))
    pages = out.column("page").to_pylist()
    assert set(pages) == {1, 2, 3, 4}
    assert pages == sorted(pages)
    assert out.column("chunk_index").to_pylist() == list(range(out.num_rows))


def test_configured_pdf_password_is_used(shared_pdf_dir: Path) -> None:
    data = (shared_pdf_dir / ENCRYPTED_PDF).read_bytes()
    files = files_table(file_row("locked.pdf", data, "", {}))

    (locked,) = ParseAndChunk(CONFIG)(files).to_pylist()
    assert "encrypted" in locked["error"]

    with_password = ParseConfig(**{**CONFIG.__dict__, "passwords": ("nope", ENCRYPTED_PASSWORD)})
    opened = ParseAndChunk(with_password)(files)
    assert opened.num_rows > 1
    assert set(opened.column("error").to_pylist()) == {""}


def test_empty_batch_gives_an_empty_table() -> None:
    out = ParseAndChunk(CONFIG)(
        pa.Table.from_pylist(
            [], schema=pa.schema([("file", pa.string()), ("data", pa.binary()), ("sidecar_sha256", pa.string()), ("metadata", pa.string())])
        )
    )
    assert out.num_rows == 0 and out.schema == parsed_schema()


def test_file_row_serialises_metadata_as_sorted_json() -> None:
    row = file_row("x.txt", b"data", "s", {"b": 1, "a": [True]}, "handbook")
    assert row == {"file": "x.txt", "source": "handbook", "data": b"data", "sidecar_sha256": "s", "metadata": '{"a": [true], "b": 1}'}


# -- EmbedChunks ------------------------------------------------------------------------------
def test_embed_adds_a_384_wide_column_with_zeros_on_failure_rows(mixed_files: pa.Table, embedder: EmbedChunks) -> None:
    parsed = ParseAndChunk(CONFIG)(mixed_files)
    out = embedder(parsed)

    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert out.drop_columns(["embedding", "embed_node"]).equals(parsed)  # nothing else changes
    # Both stages record the node they ran on: "local" without Ray, the node id inside a Ray session.
    here = current_node_id()
    assert set(out.column("embed_node").to_pylist()) == {here} == set(parsed.column("parse_node").to_pylist())
    vectors = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    failed = np.array([e != "" for e in out.column("error").to_pylist()])
    assert failed.sum() == 2
    assert not vectors[failed].any()
    np.testing.assert_allclose(np.linalg.norm(vectors[~failed], axis=1), 1.0, atol=1e-5)
    texts = [t for t, f in zip(out.column("text").to_pylist(), failed) if not f]
    np.testing.assert_allclose(vectors[~failed], embedder.model.embed_documents(texts), atol=1e-5)


def test_embed_of_only_failures_and_of_nothing(embedder: EmbedChunks) -> None:
    only_failures = ParseAndChunk(CONFIG)(files_table(file_row("e.txt", b"", "", {})))
    out = embedder(only_failures)
    assert out.num_rows == 1 and out.column("embedding").to_pylist() == [[0.0] * 384]

    nothing = embedder(only_failures.slice(0, 0))
    assert nothing.num_rows == 0 and nothing.schema.field("embedding").type == pa.list_(pa.float32(), 384)


def test_stage_output_is_written_and_found_in_the_index(tmp_path: Path, mixed_files: pa.Table, embedder: EmbedChunks) -> None:
    """What the driver does with a batch: drop failures and the error column, add, commit, search."""
    out = embedder(ParseAndChunk(CONFIG)(mixed_files))
    good = out.filter(pc.equal(out.column("error"), "")).drop_columns(["error"])
    assert good.schema.field("embedding").type == chunk_schema(384).field("embedding").type

    index = VersionedIndex(tmp_path / "index")
    builder = index.begin(PACKAGED_SPEC, {"chunk_size": CONFIG.chunk_size}, parent=None)
    builder.add(good)
    builder.commit(manifest_from_rows(good))
    index.set_current(builder.version)

    reader = IndexReader(index)
    try:
        target = good.slice(3, 1).to_pylist()[0]
        (hit,) = reader.search(embedder.model.embed_queries([target["text"]])[0], top_k=1)
        assert hit.chunk_id == target["chunk_id"]
        assert hit.metadata["team"] == "search"
        assert reader.count() == good.num_rows
    finally:
        reader.close()


# -- Blocks -----------------------------------------------------------------------------------
KB, MB = 1024, 2**20


def test_small_files_share_blocks_up_to_the_file_count() -> None:
    assert group_files([2 * KB] * 10, max_files=4, max_bytes=MB) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_small_files_share_blocks_up_to_the_byte_size() -> None:
    # 300 KB files under a 1 MB cap: three fit (900 KB), a fourth would not.
    assert group_files([300 * KB] * 7, max_files=64, max_bytes=MB) == [[0, 1, 2], [3, 4, 5], [6]]


def test_big_files_are_alone_and_split_the_run_of_small_ones_around_them() -> None:
    sizes = [KB, KB, 5 * MB, KB, MB, KB, KB]  # a file of exactly max_bytes counts as big
    assert group_files(sizes, max_files=64, max_bytes=MB) == [[0, 1], [2], [3], [4], [5, 6]]


def test_one_file_per_block_when_max_files_is_one() -> None:
    assert group_files([KB, 2 * MB, KB], max_files=1, max_bytes=MB) == [[0], [1], [2]]


def test_no_files_no_blocks() -> None:
    assert group_files([], max_files=64, max_bytes=MB) == []


@pytest.mark.parametrize("seed", range(5))
def test_every_file_is_in_exactly_one_block_in_order_within_the_limits(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 200, 3 * KB, 40 * KB, 700 * KB, 3 * MB]) for _ in range(500)]
    groups = group_files(sizes, max_files=16, max_bytes=MB)

    assert [index for group in groups for index in group] == list(range(len(sizes)))  # each once, order kept
    for group in groups:
        assert 1 <= len(group) <= 16
        if len(group) > 1:
            assert sum(sizes[i] for i in group) <= MB and all(sizes[i] < MB for i in group)  # big files never share
    big = [i for i, size in enumerate(sizes) if size >= MB]
    assert big and all([i] in groups for i in big)
    # Packing is greedy: a block closes only when the next small file would not fit.
    for this, following in zip(groups, groups[1:]):
        nxt = following[0]
        if len(this) > 1 and sizes[nxt] < MB:
            assert len(this) == 16 or sum(sizes[i] for i in this) + sizes[nxt] > MB


def test_a_packed_block_unpacks_to_its_files_in_order_and_parses_like_them(mixed_files: pa.Table) -> None:
    rows = mixed_files.to_pylist()
    packed = pa.Table.from_pylist([pack_block(rows)])  # one row of lists, as build_dataset hands a block to Ray Data
    assert packed.num_rows == 1
    assert unpack_blocks(packed).to_pylist() == rows
    assert unpack_blocks(mixed_files) is mixed_files  # already a row per file
    assert parse_and_chunk_batch(packed, CONFIG).equals(ParseAndChunk(CONFIG)(mixed_files))
    # Two blocks in one batch (Ray Data never does this with batch_size=None, but it stays correct).
    two = pa.Table.from_pylist([pack_block(rows[:1]), pack_block(rows[1:])])
    assert unpack_blocks(two).to_pylist() == rows


def test_files_per_block_keeps_several_blocks_per_parse_task_in_small_runs() -> None:
    assert files_per_block(64, files=5183, parse_concurrency=2) == 64
    assert files_per_block(64, files=40, parse_concurrency=2) == 5  # 8 blocks for 2 tasks
    assert files_per_block(64, files=3, parse_concurrency=2) == 1
    assert files_per_block(64, files=0, parse_concurrency=2) == 1


# -- CPU requests -------------------------------------------------------------------------------
def test_beside_a_serving_graph_the_requests_share_what_is_free() -> None:
    # 2 CPUs, the Serve graph holds 1.5: one embedding actor and two parse tasks share 0.5.
    plan = plan_cpus(free_cpus=0.5, cores=2, embed_actors=1)
    assert plan == CpuPlan(parse_num_cpus=0.16, embed_num_cpus=0.16, parse_concurrency=2)
    assert plan.parse_num_cpus * plan.parse_concurrency + plan.embed_num_cpus <= 0.5


def test_alone_the_requests_take_the_free_cpus_at_most_one_each() -> None:
    assert plan_cpus(free_cpus=2.0, cores=2, embed_actors=1) == CpuPlan(0.66, 0.66, 2)
    # 4 logical CPUs declared on 2 cores: concurrency follows the cores, requests stay <= 1 CPU.
    assert plan_cpus(free_cpus=4.0, cores=2, embed_actors=1) == CpuPlan(1.0, 1.0, 2)
    assert plan_cpus(free_cpus=64.0, cores=64, embed_actors=2) == CpuPlan(0.96, 0.96, 64)


def test_little_free_means_fewer_parse_tasks_before_giving_up() -> None:
    plan = plan_cpus(free_cpus=0.12, cores=8, embed_actors=1)
    assert plan.parse_num_cpus >= MIN_CPU_SHARE and plan.embed_num_cpus >= MIN_CPU_SHARE
    assert plan.parse_concurrency == 1 and plan == CpuPlan(0.06, 0.06, 1)
    assert plan_cpus(free_cpus=0.1, cores=2, embed_actors=1) == CpuPlan(0.05, 0.05, 1)


@pytest.mark.parametrize("free", [0.0, 0.09, -0.5])
def test_nothing_to_spare_fails_with_the_reason(free: float) -> None:
    with pytest.raises(NoCpuToSpare) as error:
        plan_cpus(free_cpus=free, cores=2, embed_actors=1)
    message = str(error.value)
    assert "no CPU to spare for the ingest" in message and f"{MIN_CPU_SHARE} CPU" in message
    assert "ingest.parse_num_cpus" in message


def test_two_embedding_actors_need_a_share_each() -> None:
    with pytest.raises(NoCpuToSpare):
        plan_cpus(free_cpus=0.14, cores=2, embed_actors=2)
    assert plan_cpus(free_cpus=0.15, cores=2, embed_actors=2) == CpuPlan(0.05, 0.05, 1)


def test_explicit_requests_are_used_as_given() -> None:
    assert plan_cpus(0.5, 2, 1, parse_num_cpus=1.0, embed_num_cpus=1.0) == CpuPlan(1.0, 1.0, 2)
    assert plan_cpus(0.5, 2, 1, parse_concurrency=3) == CpuPlan(0.12, 0.12, 3)
    # One explicit: the automatic one gets what is left after it.
    assert plan_cpus(2.0, 2, 1, parse_num_cpus=1.0) == CpuPlan(1.0, 1.0, 2)
    assert plan_cpus(0.5, 2, 1, embed_num_cpus=0.3) == CpuPlan(0.1, 0.3, 2)
    with pytest.raises(NoCpuToSpare, match=r"after ingest.parse_num_cpus=1"):
        plan_cpus(0.5, 2, 1, parse_num_cpus=1.0)


def test_a_request_never_exceeds_what_one_node_has_free() -> None:
    assert plan_cpus(free_cpus=3.0, cores=4, embed_actors=1, largest_free_on_a_node=0.3) == CpuPlan(0.3, 0.3, 4)
    with pytest.raises(NoCpuToSpare):
        plan_cpus(free_cpus=0.5, cores=4, embed_actors=1, largest_free_on_a_node=0.04)


def test_node_cores_are_the_cores_this_process_may_use() -> None:
    assert 1 <= node_cores() <= len(os.sched_getaffinity(0)) <= (os.cpu_count() or 1)
