"""Contextual chunk text: each chunk is embedded and BM25-indexed with its document's title and
section heading in front, while what is stored and returned stays the chunk's own text. Titles
come from the documents themselves (real shared files), and the junk that authoring tools leave
in title fields is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ingest_jobs.pipeline import EmbedChunks, ParseAndChunk, ParseConfig, file_row
from ingest_jobs.runner import chunking_record
from rag_core.contextual import DOCUMENT_TITLE_KEY, chunk_indexed_text, indexed_text
from rag_core.embedding import PACKAGED_MINILM, SOURCE_PACKAGE, EmbeddingModelSpec
from rag_core.index_store import chroma_metadata, indexed_texts
from rag_core.parsing import DocumentParser
from rag_core.parsing.base import document_title
from rag_core.parsing.text import parse_plain
from rag_core.settings import RAGSettings

SHARED_DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "docs"


# -- what a chunk is indexed by ---------------------------------------------------------------
def test_title_and_heading_go_in_front_and_the_text_is_kept_whole() -> None:
    text = "Employees receive 25 days per year."
    assert indexed_text(text, title="Staff Handbook 2024", heading="Benefits > Vacation") == (
        "Staff Handbook 2024\nBenefits > Vacation\nEmployees receive 25 days per year."
    )
    assert indexed_text(text) == text
    assert indexed_text(text, title="  ", heading="") == text


def test_what_the_chunk_already_starts_with_is_not_repeated() -> None:
    # A text file's first chunk begins with its title line; a section's first chunk with its heading.
    assert indexed_text("Staff Handbook 2024\n\nWelcome.", title="Staff Handbook 2024") == "Staff Handbook 2024\n\nWelcome."
    assert indexed_text("## Vacation\nYou get 25 days.", title="Staff Handbook 2024", heading="Benefits > Vacation") == (
        "Staff Handbook 2024\nBenefits\n## Vacation\nYou get 25 days."
    )
    # A heading path that begins with the title (EPUB chapters) says it once.
    assert indexed_text("Snow falls.", title="Winter Sports", heading="Winter Sports > Skiing") == "Winter Sports > Skiing\nSnow falls."


def test_a_stored_chunk_is_indexed_from_its_metadata_as_at_ingest() -> None:
    row = {
        "file": "a.md",
        "source": "",
        "page": 1,
        "chunk_index": 3,
        "char_start": 0,
        "char_end": 9,
        "file_sha256": "x",
        "ingested_at": "t",
        "index_version": "v000001",
        "ocr_confidence": None,
        "metadata": '{"title": "the sidecar\'s own title key is untouched"}',
        "location": '{"kind": "section", "page": 1, "heading": "Benefits > Vacation"}',
        "title": "Staff Handbook 2024",
        "text": "25 days.",
    }
    metadata = chroma_metadata(row)
    assert metadata[DOCUMENT_TITLE_KEY] == "Staff Handbook 2024" and metadata["title"] == "the sidecar's own title key is untouched"
    expected = "Staff Handbook 2024\nBenefits > Vacation\n25 days."
    assert chunk_indexed_text("25 days.", metadata) == expected
    table = pa.Table.from_pylist([row])
    assert indexed_texts(table, contextual=True) == [expected]
    assert indexed_texts(table, contextual=False) == ["25 days."]


# -- where titles come from --------------------------------------------------------------------
def test_a_text_files_title_is_a_short_first_line_set_apart() -> None:
    assert parse_plain(b"Quarterly travel policy\n\nTrains are booked in second class.").title == "Quarterly travel policy"
    assert parse_plain(b"Trains are booked in second class.\n\nFlights need approval.").title is None  # a sentence
    assert parse_plain(b"Quarterly travel policy\nTrains are booked in second class.").title is None  # no blank line
    assert parse_plain(b"Just one line").title is None
    assert parse_plain(("x" * 250 + "\n\nbody").encode()).title is None


@pytest.mark.parametrize(
    ("filename", "title"),
    [
        ("markitdown__test.pptx", "AutoGen: Enabling Next-Gen LLM Applications via Multi-Agent Conversation"),
        ("docling__wiki_duck.html", "Duck - Wikipedia"),
        ("unstructured__winter-sports.epub", "Winter Sports in Switzerland"),
        ("docling__word_sample.docx", None),  # its title field is empty
    ],
)
def test_office_html_and_epub_titles_are_read_from_the_shared_files(filename: str, title: str | None) -> None:
    assert DocumentParser(()).parse(filename, (SHARED_DOCS / filename).read_bytes()).title == title


@pytest.mark.parametrize(
    ("filename", "title"),
    [
        ("camelot__12s0324.pdf", "Arrests by Sex and Age"),
        ("pdfminer__zen_of_python_corrupted.pdf", None),  # 'zen_of_python.txt'
        ("unstructured__fake-memo.pdf", None),  # 'fake-memo'
        ("pdfplumber__issue-463-example.pdf", None),  # 'grasshopper'
        ("pypdf-samples__pdflatex-4-pages.pdf", None),  # no title field
    ],
)
def test_pdf_metadata_titles_are_used_only_when_they_read_as_titles(shared_pdf_dir: Path, filename: str, title: str | None) -> None:
    assert DocumentParser(()).parse(filename, (shared_pdf_dir / filename).read_bytes()).title == title


@pytest.mark.parametrize(
    "raw",
    [
        "Microsoft Word - SPECIAL BOARD AGENDA 040616.doc",
        "Agriculture Statistics 2012-13..psd",
        "Sample Dexa Report.PDF",
        "Adobe Photoshop PDF",
        "88300 162..177",
        "905_Precinct_NoOU",
        "untitled",
        "",
        None,
    ],
)
def test_title_fields_left_by_tools_are_refused(raw: str | None) -> None:
    # Each of these is the title field of one of the shared PDFs.
    assert document_title(raw) is None


def test_real_titles_are_kept_with_their_spacing_normalised() -> None:
    assert (
        document_title("  Public Notification of a Child Death,\n Serious Injury ")
        == "Public Notification of a Child Death, Serious Injury"
    )
    assert document_title("코로나-19 관련 보험약관상 재해보험금 지급문제 및 개선과제") is not None


# -- ingest: the title travels with each chunk, and the vectors are of the indexed text --------
def test_chunk_rows_carry_the_title_and_are_embedded_with_it() -> None:
    body = "\n\n".join(f"Paragraph {i} says the allowance is {i * 10} euros per day. " * 3 for i in range(4))
    data = f"Travel allowance rules for field staff\n\n{body}".encode()
    config = ParseConfig(
        passwords=(), chunk_size=200, chunk_overlap=20, separators=("\n\n", "\n", ". ", " ", ""), ingested_at="t", index_version="v1"
    )
    rows = ParseAndChunk(config)(pa.Table.from_pylist([file_row("travel.txt", data, "", {})]))
    assert rows.num_rows > 2 and set(rows.column("title").to_pylist()) == {"Travel allowance rules for field staff"}
    spec = EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "").to_dict()
    contextual = EmbedChunks(spec, device="cpu", contextual=True)(rows).column("embedding").to_pylist()
    plain = EmbedChunks(spec, device="cpu", contextual=False)(rows).column("embedding").to_pylist()
    # The first chunk starts with the title (same vector); every later one is embedded with it.
    assert np.allclose(contextual[0], plain[0], atol=1e-5)
    assert all(not np.allclose(c, p, atol=1e-3) for c, p in zip(contextual[1:], plain[1:]))


def test_the_setting_is_part_of_the_chunking_record_so_changing_it_rebuilds_the_index() -> None:
    assert chunking_record(RAGSettings())["contextual"] is False  # off by default: see README, Retrieval quality
    assert chunking_record(RAGSettings(chunking={"contextual": True}))["contextual"] is True
