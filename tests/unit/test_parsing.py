"""DocumentParser on the real shared PDFs (read in place) and on small text files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_core.location import Location
from rag_core.parsing import NO_TEXT_REASON, DocumentParseError, DocumentParser, ParsedSegment


def parse_shared(pdf_dir: Path, filename: str, passwords: tuple[str, ...] = ()) -> list[ParsedSegment]:
    return DocumentParser(passwords).parse(filename, (pdf_dir / filename).read_bytes()).segments


def parse_failure(pdf_dir: Path, filename: str, passwords: tuple[str, ...] = ()) -> str:
    with pytest.raises(DocumentParseError) as caught:
        parse_shared(pdf_dir, filename, passwords)
    return caught.value.reason


def is_password_protected(row: dict[str, str]) -> bool:
    return row["encrypted"].startswith("yes") and bool(row["password"])


# -- readable PDFs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "filename",
    ["pypdf-samples__pdflatex-4-pages.pdf", "docling__multi_page.pdf", "unstructured__multi-column-2p.pdf"],
)
def test_text_pdf_yields_every_page_numbered_from_one(shared_pdf_dir: Path, pdf_manifest: dict, filename: str) -> None:
    pages = parse_shared(shared_pdf_dir, filename)

    assert [p.location.page for p in pages] == list(range(1, int(pdf_manifest[filename]["pages"]) + 1))
    assert all(p.location.kind == "page" for p in pages)
    assert all(p.text.strip() for p in pages)
    assert all("\x00" not in p.text for p in pages)


def test_blank_pages_are_skipped_and_the_others_keep_their_numbers(shared_pdf_dir: Path) -> None:
    # MANIFEST: 4 pages, 2 of them with text; the blank ones hold no image, so no OCR is tried.
    document = DocumentParser().parse("paper.pdf", (shared_pdf_dir / "unstructured__layout-parser-paper-with-empty-pages.pdf").read_bytes())
    assert len(document.segments) == 2
    assert all(p.text.strip() for p in document.segments)
    assert document.incomplete == [] and document.ocr_engine == ""


def test_known_text_is_extracted(shared_pdf_dir: Path) -> None:
    pages = parse_shared(shared_pdf_dir, "docling__multi_page.pdf")
    assert "Word Processor" in " ".join(p.text for p in pages)


def test_upper_case_extension_is_parsed_as_pdf(shared_pdf_dir: Path) -> None:
    data = (shared_pdf_dir / "pypdf-samples__crazyones-pdfa.pdf").read_bytes()
    pages = DocumentParser().parse("SCAN.PDF", data).segments
    assert pages[0].location.page == 1 and pages[0].text.strip()


# -- encrypted PDFs ---------------------------------------------------------------------------
@pytest.mark.pdf_rows(where=is_password_protected)
def test_encrypted_pdf_opens_with_its_password(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    pages = parse_shared(shared_pdf_dir, pdf_row["filename"], ("wrong-one", pdf_row["password"]))
    assert [p.location.page for p in pages] == sorted({p.location.page for p in pages})
    assert 1 <= len(pages) <= int(pdf_row["pages"])
    assert any(p.text.strip() for p in pages)


@pytest.mark.pdf_rows(where=is_password_protected)
def test_encrypted_pdf_without_its_password_fails_as_encrypted(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    assert "encrypted" in parse_failure(shared_pdf_dir, pdf_row["filename"])
    assert "encrypted" in parse_failure(shared_pdf_dir, pdf_row["filename"], ("not-the-password",))


@pytest.mark.pdf_rows(where=lambda row: row["category"] == "encrypted_owner_only")
def test_owner_only_encrypted_pdf_opens_with_the_empty_password(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    assert pdf_row["password"] == ""
    pages = parse_shared(shared_pdf_dir, pdf_row["filename"])
    assert len(pages) == int(pdf_row["pages"])
    assert any(p.text.strip() for p in pages)


# -- files that cannot yield text -------------------------------------------------------------
@pytest.mark.pdf_rows(where=lambda row: row["bytes"] == "0")
def test_zero_byte_file_is_reported_empty(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    assert parse_failure(shared_pdf_dir, pdf_row["filename"]) == "empty file (0 bytes)"


def test_zero_byte_text_file_is_reported_empty() -> None:
    with pytest.raises(DocumentParseError, match=r"^empty file \(0 bytes\)$"):
        DocumentParser().parse("notes.txt", b"")


@pytest.mark.pdf_rows(where=lambda row: row["pypdf_status"].startswith("unreadable") and row["bytes"] != "0")
def test_unreadable_pdf_is_reported_malformed(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    assert parse_failure(shared_pdf_dir, pdf_row["filename"]).startswith("malformed PDF")


def test_truncated_pdf_is_reported_malformed(shared_pdf_dir: Path) -> None:
    data = (shared_pdf_dir / "pypdf-samples__pdflatex-4-pages.pdf").read_bytes()[:2000]
    with pytest.raises(DocumentParseError) as caught:
        DocumentParser().parse("truncated.pdf", data)
    assert caught.value.reason.startswith("malformed PDF")


@pytest.mark.pdf_rows(where=lambda row: row["extractable_text"] == "no" and row["pypdf_status"] == "ok")
def test_image_only_pdf_without_ocr_names_the_missing_engine(pdf_row: dict[str, str], shared_pdf_dir: Path) -> None:
    # No OCR configured: the scan is not indexed, and the reason says why and which pages.
    reason = parse_failure(shared_pdf_dir, pdf_row["filename"])
    assert reason.startswith("page") and "OCR is turned off" in reason


def test_image_only_pdf_with_a_missing_ocr_binary_says_ocr_engine_not_installed(shared_pdf_dir: Path) -> None:
    from rag_core.ocr import TesseractOcr

    parser = DocumentParser(ocr_factory=lambda: TesseractOcr(tesseract_cmd="/nonexistent/tesseract"))
    with pytest.raises(DocumentParseError, match="OCR engine not installed"):
        parser.parse("scan.pdf", (shared_pdf_dir / "ocrmypdf__c02-22.pdf").read_bytes())


@pytest.mark.parametrize("filename", ["blank.txt", "blank.md"])
def test_whitespace_only_text_file_has_no_extractable_text(filename: str) -> None:
    with pytest.raises(DocumentParseError, match=NO_TEXT_REASON):
        DocumentParser().parse(filename, b" \n\t\n  ")


# -- text files -------------------------------------------------------------------------------
def test_utf8_txt_with_a_stray_byte_keeps_its_characters() -> None:
    data = ("Le café est très chaud, déjà servi. " * 20).encode() + b"\xff" + b" fin."
    pages = DocumentParser().parse("notes.txt", data).segments
    assert len(pages) == 1 and pages[0].location == Location("page", 1)
    text = pages[0].text
    assert text.startswith("Le café est très chaud") and text.endswith("\ufffd fin.")
    assert text.count("\ufffd") == 1


def test_markdown_sections_carry_their_heading_path_and_keep_the_text_verbatim() -> None:
    markdown = (
        "# Title\n\nSome *emphasis* and a [link](http://example.com).\n\n## Part\n\n- item 1\n- item 2\n\n```\n# not a heading\n```\n"
    )
    segments = DocumentParser().parse("README.md", markdown.encode()).segments
    assert [s.location.heading for s in segments] == ["Title", "Title > Part"]
    assert "".join(s.text for s in segments) == markdown
    assert segments[1].text.startswith("## Part")


def test_nul_bytes_are_removed_from_text_files() -> None:
    assert DocumentParser().parse("a.txt", b"ab\x00cd").segments.pop().text == "abcd"


def test_binary_bytes_named_txt_are_refused_not_indexed_as_garbage() -> None:
    data = bytes(range(256)) * 40
    with pytest.raises(DocumentParseError, match="does not decode cleanly|unknown encoding"):
        DocumentParser().parse("blob.txt", data)
