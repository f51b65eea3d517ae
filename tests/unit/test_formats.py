"""Each format's parser on the real shared documents (../shared/data/docs, read in place): text,
structure and location kept, bad inputs refused with a reason."""

from __future__ import annotations

import pytest

from rag_core.location import Location
from rag_core.parsing import DocumentParseError, DocumentParser, ParsedDocument, parser_signature
from rag_core.parsing.base import table_row_lines
from rag_core.parsing.encoding import decode_text
from tests.conftest import SHARED_DATA

DOCS = SHARED_DATA / "docs"


def parse(name: str, passwords: tuple[str, ...] = ()) -> ParsedDocument:
    path = DOCS / name
    if not path.is_file():
        pytest.fail(f"shared test data missing: {path}")
    return DocumentParser(passwords).parse(name, path.read_bytes())


def text_of(document: ParsedDocument) -> str:
    return "\n".join(segment.text for segment in document.segments)


def failure(name: str, passwords: tuple[str, ...] = ()) -> str:
    with pytest.raises(DocumentParseError) as caught:
        parse(name, passwords)
    return caught.value.reason


# -- Word -------------------------------------------------------------------------------------
def test_docx_sections_carry_their_heading_path() -> None:
    document = parse("unstructured__category-level.docx")
    headings = [s.location.heading for s in document.segments]
    assert all(s.location.kind == "section" and s.location.page == 1 for s in document.segments)
    assert len(set(headings)) == len(headings) > 1  # one segment per heading
    first_heading = next(s for s in document.segments if s.location.heading)
    assert first_heading.text.startswith(first_heading.location.heading.split(" > ")[-1])  # the heading opens its section
    assert "Call me Ishmael" in text_of(document)


def test_docx_table_rows_keep_their_headers_and_merged_cells_repeat() -> None:
    text = text_of(parse("docling__word_tables.docx"))
    assert "Header 0.0: Cell 1.0 | Header 0.1: Cell 1.1 | Header 0.2: Cell 1.2" in text.splitlines()
    # A cell merged across two columns is read under both headers.
    assert "Header 0.1: Merged Cell 1.1 1.2 | Header 0.2: Merged Cell 1.1 1.2" in text


def test_docx_text_boxes_are_read_once() -> None:
    text = text_of(parse("docling__textbox.docx"))
    assert "Infectious Disea" in text
    # DrawingML and its VML fallback hold every box twice; only one copy is read.
    sentences = [line for line in text.splitlines() if len(line) > 40]
    assert sentences and len(sentences) == len(set(sentences))


def test_docx_comments_and_equations_are_read() -> None:
    assert "Comment" in text_of(parse("docling__docx_comments.docx"))
    assert "θ" in text_of(parse("markitdown__equations.docx"))


def test_japanese_docx_keeps_its_characters() -> None:
    assert "システム開発" in text_of(parse("kotaemon__dummy.docx"))


# -- PowerPoint -------------------------------------------------------------------------------
def test_pptx_slides_are_pages_with_their_titles_and_notes() -> None:
    document = parse("docling__powerpoint_sample.pptx")
    assert [s.location.slide for s in document.segments] == [s.location.page for s in document.segments] == [1, 2, 3]
    assert all(s.location.kind == "slide" for s in document.segments)
    second = document.segments[1]
    assert second.location.heading == "Second slide title"
    assert "Notes: Some notes on the second slide." in second.text


def test_pptx_chart_values_and_tables_are_read() -> None:
    chart = parse("docling__pptx_chart.pptx").segments[0].text
    assert "Freshwater Ducks: 2019: 120 | 2020: 130 | 2021: 150" in chart
    table = parse("unstructured__fake-power-point-table.pptx").segments[0].text
    assert "Column 1: Red | Column 2: Green | Column 3: Blue" in table.splitlines()


# -- spreadsheets -----------------------------------------------------------------------------
def test_xlsx_rows_carry_sheet_title_header_and_row_numbers() -> None:
    document = parse("unstructured__stanley-cups.xlsx")
    first = document.segments[0]
    assert first.location == Location("sheet", 1, sheet="Stanley Cups", heading="Stanley Cups")
    assert "Team: Maple Leafs | Location: TOR | Stanley Cups: 13" in first.text.splitlines()
    line_start = first.text.index("Team: Maple Leafs")
    assert first.rows_between(line_start, line_start + 10) == (5, 5)  # the sheet's own row 5
    assert {s.location.sheet for s in document.segments} == {"Stanley Cups", "Stanley Cups Since 67"}
    assert [s.location.page for s in document.segments] == [1, 2]


def test_xlsx_header_rows_set_apart_by_a_blank_row_still_name_the_figures() -> None:
    text = text_of(parse("unstructured__2023-half-year-analyses-by-segment.xlsx"))
    assert "In millions of CHF: Zone NA | Sales (a): 12553" in text


def test_csv_rows_keep_header_and_row_numbers_and_long_tables_repeat_the_header() -> None:
    document = parse("gdp__gdp.csv")
    assert len(document.segments) > 10
    for segment in document.segments:
        assert segment.text.startswith("Country Name | Country Code | Year | Value\n")
        assert segment.location.kind == "sheet" and segment.location.sheet == "gdp__gdp.csv"
    rows = [row for s in document.segments for _, row in s.row_starts]
    assert rows == sorted(rows) and rows[0] == 1 and len(rows) == len(set(rows))


def test_csv_in_shift_jis_is_decoded() -> None:
    text = text_of(parse("markitdown__test_mskanji.csv"))
    assert "名前: 佐藤太郎 | 年齢: 30 | 住所: 東京" in text


def test_cells_are_written_as_stored() -> None:
    assert table_row_lines(["Region", "Q3", ""], [["EMEA", "4.2", "x"]]) == ["Region: EMEA | Q3: 4.2 | x"]
    text = text_of(parse("co2-ppm__co2-annmean-mlo.csv"))
    assert "Year: 1959 | Mean: 315.98 | Uncertainty: 0.12" in text


# -- HTML, EPUB, ODT ----------------------------------------------------------------------------
def test_windows_1252_html_without_charset_reads_correctly() -> None:
    text = text_of(parse("unstructured__fake-html-cp1252.html"))
    assert "L'été était très chaud" in text and "El niño comió paella" in text and "15,50 €" in text


def test_html_leaves_out_scripts_and_navigation_and_keeps_sections() -> None:
    document = parse("docling__wiki_duck.html")
    text = text_of(document)
    assert "Afrikaans" not in text  # the language menu
    assert "function(" not in text and "mw.config" not in text
    assert any(s.location.heading == "Duck > Etymology" for s in document.segments)


def test_html_pre_keeps_its_layout() -> None:
    text = text_of(parse("unstructured__fake-html-pre.htm"))
    assert "UNITING AND STRENGTHENING AMERICA" in text and "\n" in text[:400]


def test_epub_chapters_in_reading_order_under_the_book_title() -> None:
    document = parse("markitdown__test.epub")
    assert [s.location.heading for s in document.segments] == [
        "Test EPUB Document > Chapter 1: Test Content",
        "Test EPUB Document > Chapter 2: More Content",
    ]
    assert [s.location.page for s in document.segments] == sorted(s.location.page for s in document.segments)


def test_odt_tables_and_headings() -> None:
    assert "Header row: Leader | Mon: Sarah | Wed: Mark | Fri: Ryan" in text_of(parse("unstructured__fake.odt"))
    headings = [s.location.heading for s in parse("docling__text_document_01.odt").segments]
    assert "heading level 1.0 > Heading level 2: A" in headings


# -- bad input --------------------------------------------------------------------------------
def test_truncated_office_files_are_refused_with_a_reason() -> None:
    assert failure("file-scraper__invalid_2007_onwards_corrupted.docx") == "corrupt or truncated .docx file (not a readable ZIP package)"
    assert failure("file-scraper__invalid_2007_onwards_corrupted.pptx") == "corrupt or truncated .pptx file (not a readable ZIP package)"
    assert failure("file-scraper__invalid__empty.docx") == "empty file (0 bytes)"


def test_password_protected_office_files_open_only_with_their_password() -> None:
    reason = failure("msoffcrypto__example_password.docx", ("wrong",))
    assert reason == "password-protected .docx file: no configured password opens it (ingest.passwords)"
    assert "Lorem ipsum" in text_of(parse("msoffcrypto__example_password.docx", ("wrong", "Password1234_")))
    assert "password-protected .xlsx" in failure("unstructured__password_protected.xlsx")


def test_a_legacy_binary_office_file_is_named_as_such() -> None:
    ole_not_encrypted = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600
    with pytest.raises(DocumentParseError, match="Office"):
        DocumentParser().parse("old.docx", ole_not_encrypted)


def test_unsupported_extension_is_refused() -> None:
    with pytest.raises(DocumentParseError, match=r"unsupported file type \.xyz"):
        DocumentParser().parse("a.xyz", b"data")


def test_encoding_detection_prefers_declared_then_utf8_then_detection() -> None:
    assert decode_text("naïve".encode()) == ("naïve", "utf-8")
    assert decode_text("naïve".encode("latin-1"), declared="iso-8859-1")[0] == "naïve"
    assert decode_text(b"\xef\xbb\xbfbom") == ("bom", "utf-8-sig")


# -- signatures -------------------------------------------------------------------------------
def test_parser_signature_names_format_revision_and_library_version() -> None:
    from importlib import metadata

    assert parser_signature("a.DOCX") == f"docx/2 python-docx {metadata.version('python-docx')}"
    assert parser_signature("a.pdf").startswith("pdf/") and "pdfplumber" in parser_signature("a.pdf")
    assert "pdfplumber" not in parser_signature("a.pdf", pdf_tables=False)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in DOCS.glob("*") if p.suffix in {".docx", ".pptx", ".xlsx", ".csv", ".html", ".htm", ".epub", ".odt"})
)
def test_every_good_shared_document_yields_located_text(name: str) -> None:
    import csv

    rows = {row["filename"]: row for row in csv.DictReader((DOCS / "MANIFEST.tsv").open(newline=""), delimiter="\t")}
    if rows[name]["expected"].startswith("bad-input"):
        failure(name)
        return
    document = parse(name)
    assert document.segments and document.text_chars > 0
    assert all(s.text.strip() and s.location.page >= 1 for s in document.segments)
    assert document.incomplete == []


def test_a_csv_keeps_its_header_after_blank_lines() -> None:
    document = DocumentParser().parse("cups.csv", b"Team,City,Cups\nLeafs,TOR,13\n\nBruins,BOS,6\nHabs,MTL,24\n")
    text = text_of(document)
    assert "Team: Bruins | City: BOS | Cups: 6" in text and "Team: Habs | City: MTL | Cups: 24" in text
    second = document.segments[1]
    assert second.rows_between(0, len(second.text)) == (4, 5)  # the repeated header is no row of its own


def test_equal_neighbouring_cells_are_all_kept() -> None:
    assert table_row_lines([], [["5", "5", "3"]]) == ["5 | 5 | 3"]
    assert table_row_lines(["Revenue", "Revenue", "Cost"], [["10", "10", "3"]]) == ["Revenue: 10 | Revenue: 10 | Cost: 3"]


def test_locations_are_stored_under_prefixed_keys_and_read_back_tolerantly() -> None:
    location = Location("sheet", 2, sheet="Q3", rows="12-40", heading="Revenue")
    stored = location.to_metadata()
    assert stored == {"location_kind": "sheet", "location_sheet": "Q3", "location_rows": "12-40", "location_heading": "Revenue"}
    assert Location.from_metadata({**stored, "page": 2}) == location
    # Chunks from before locations, or with odd values, read as plain pages.
    assert Location.from_metadata({"page": 3, "sheet": "a sidecar key", "location_slide": "x"}) == Location("page", 3)
    assert location.describe() == "sheet 'Q3', rows 12-40"
    assert Location("slide", 4, slide=4, heading="Roadmap").describe() == "slide 4, 'Roadmap'"
