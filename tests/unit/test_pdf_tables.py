"""pdfplumber table rows on real table PDFs: a cell comes out on one line with its row label and
its column header; merged, stacked and header-less tables; the cheap gate; files it cannot read."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from rag_core.parsing.pdf_tables import looks_tabular, table_page_texts
from tests.conftest import PDF_DIR


@cache
def _pages(name: str, pages: tuple[int, ...], password: str | None = None) -> dict[int, str]:
    path = PDF_DIR / name
    if not path.is_file():
        pytest.fail(f"shared test data missing: {path}")
    return table_page_texts(Path(path).read_bytes(), pages, password)


def _line_with(text: str, *parts: str) -> str:
    """The one line of `text` holding every part; fails when there is none."""
    lines = [line for line in text.splitlines() if all(part in line for part in parts)]
    assert lines, f"no line holds all of {parts!r}"
    return lines[0]


def test_cell_on_its_rows_line_with_its_column_header_nics():
    text = _pages("pdfplumber__nics-background-checks-2015-11.pdf", (1,))[1]
    _line_with(text, "State / Territory: Alabama", "Handgun: 23,022")
    # Multi-row header joined per column; the wide row is wrapped with its label repeated.
    _line_with(text, "State / Territory: Georgia", "Redemption Long Gun: 1,796")
    _line_with(text, "State / Territory: Kentucky", "Totals: 295,891")
    assert text.splitlines()[0] == "NICS Firearm Background Checks November - 2015"  # the title row stays text


def test_rotated_and_two_row_headers_agstat():
    text = _pages("camelot__agstat.pdf", (1,))[1]
    _line_with(text, "District: Cuttack", "Projected Population for 2012-13 (In lakhs): 26.63")
    _line_with(text, "District: Kalahandi", "Production (Rice) (In Lakh tonnes) Rabi: 1.13")


def test_merged_cells_repeat_down_their_rows():
    text = _pages("camelot__row_span_1.pdf", (1,))[1]
    _line_with(text, "Plan Type: GMC", "County: Sacramento", "Plan Name: Kaiser Foundation", "Totals: 74,620")
    _line_with(text, "Plan Type: COHS", "County: Napa", "Plan Name: Partnership Health Plan of CA", "Totals: 28,398")


def test_rows_stacked_in_one_ruled_row_are_split():
    text = _pages("pdfplumber__issue-53-example.pdf", (1,))[1]
    line = _line_with(text, "Aug-2015", "L/F(%): 82.5")
    assert "Jul-2015" not in line and "Pax: 721,817" in line


def test_a_continued_table_takes_the_previous_pages_header_else_has_none():
    both = _pages("pdfplumber__ca-warn-report.pdf", (1, 2))
    _line_with(both[1], "Company: KLA-Tencor Corporation", "City: Milpitas", "No. Of: 213")
    _line_with(both[2], "Company: Boeing Company", "City: Huntington Beach", "No. Of: 65")
    # Page 2 alone: its table starts with figures, so its rows carry no column names.
    alone = _pages("pdfplumber__ca-warn-report.pdf", (2,))[2]
    line = _line_with(alone, "Boeing Company", "Huntington Beach", "65")
    assert ":" not in line.replace("Layoff", "")  # no "Column: value" pairs
    assert line.startswith("07/17/2015 | 09/18/2015")  # dates printed one character at a time, rejoined


def test_text_around_the_table_is_kept():
    text = _pages("camelot__schools.pdf", (1,))[1]
    assert text.startswith("Vote Yes for Strong Schools")
    _line_with(text, "Last Name: Anfang", "Occupation: Ex Director", "Employer: BOMA")


def test_gate_takes_figure_rows_not_prose():
    table = "State 2010 2011 2012\nAlabama 1,204 1,311 1,402\nAlaska 301 299 310\nArizona 2,003 2,100 2,250\n"
    # Prose with a few numbers per line stays out; a line of prose that is a third figures would
    # pass, which costs only time (pdfplumber then finds no ruled table and pypdf's text stays).
    prose = (
        "BLS projects that total employment in the United States will rise 20.5 million between\n"
        "2010 and 2020, from about 143.1 million to a projected 163.5 million. The annual growth\n"
        "rate of 1.3 percent reverses the 0.2-percent annual rate of decline that occurred during\n"
        "the 2000-2010 period, in which 3.2 million jobs were lost.\n"
    ) * 3
    assert looks_tabular(table)
    assert not looks_tabular(prose)
    assert not looks_tabular("")


def test_pages_without_a_ruled_table_and_unreadable_files_are_absent():
    assert _pages("camelot__population_growth.pdf", (1,)) == {}  # unruled: pypdf's text stays
    assert table_page_texts(b"%PDF-1.4 not really", None) == {}
    assert table_page_texts(b"", [1]) == {}


def test_encrypted_file_with_its_password():
    assert 1 in _pages("camelot__health_protected.pdf", (1,), "ownerpass")
    assert _pages("camelot__health_protected.pdf", (1,), "wrong") == {}
