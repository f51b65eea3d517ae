"""Spreadsheets: Excel workbooks (.xlsx, openpyxl) and delimited text (.csv). Every row becomes a
line 'Column: value | Column: value', so a cell is retrievable with its row's and column's meaning;
each table keeps its sheet name and each chunk its sheet row range."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

from rag_core.location import Location
from rag_core.parsing.base import (
    DocumentParseError,
    ParsedDocument,
    ParsedSegment,
    header_line,
    looks_numeric,
    short_heading,
    table_row_lines,
)
from rag_core.parsing.encoding import decode_text
from rag_core.parsing.office import open_package

LIBRARY = "openpyxl"
REVISION = 1
CSV_REVISION = 1

Row = tuple[int, list[str]]  # (row number in the sheet, cell texts)
# A long table is cut into segments of about this size, each with its header again.
MAX_SEGMENT_CHARS = 16_000


def parse_xlsx(data: bytes, passwords: Sequence[str]) -> ParsedDocument:
    import openpyxl

    package = open_package(data, "xlsx", passwords)
    try:
        # data_only: the values Excel last computed, not formulas.
        workbook = openpyxl.load_workbook(io.BytesIO(package), data_only=True)
    except Exception as exc:
        raise DocumentParseError(f"unreadable .xlsx workbook: {type(exc).__name__}: {exc}") from exc
    segments: list[ParsedSegment] = []
    for position, sheet in enumerate(workbook.worksheets, start=1):
        merged = _merged_values(sheet)
        rows: list[Row] = []
        for row in sheet.iter_rows():
            cells = []
            for cell in row:
                value = merged.get(cell.coordinate, cell.value)
                cells.append(cell_text(value))
            rows.append((row[0].row if row else len(rows) + 1, cells))
        segments.extend(table_segments(rows, Location("sheet", position, sheet=sheet.title)))
    return ParsedDocument(segments)


def parse_csv(data: bytes, name: str) -> ParsedDocument:
    text, _ = decode_text(data)
    sample = text[:20_000]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [
            (number, [cell.strip() for cell in record]) for number, record in enumerate(csv.reader(io.StringIO(text), dialect), start=1)
        ]
    except csv.Error as exc:
        raise DocumentParseError(f"malformed CSV: {exc}") from exc
    stem = name.rsplit("/", 1)[-1]
    return ParsedDocument(table_segments(rows, Location("sheet", 1, sheet=stem), header_first=True))


def cell_text(value: Any) -> str:
    """A cell as stored, not as formatted: 26347, 28130.48, 2023-06-30."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return " ".join(str(value).split())


def _merged_values(sheet: Any) -> dict[str, Any]:
    """A merged range's value for every cell it covers (openpyxl keeps it in the top-left only)."""
    from openpyxl.utils import get_column_letter

    values = {}
    for merged in getattr(sheet, "merged_cells", ()).ranges if hasattr(sheet, "merged_cells") else ():
        value = sheet.cell(merged.min_row, merged.min_col).value
        for row in range(merged.min_row, merged.max_row + 1):
            for column in range(merged.min_col, merged.max_col + 1):
                values[f"{get_column_letter(column)}{row}"] = value
    return values


def _is_number(text: str) -> bool:
    return looks_numeric(text)


def _header_only(block: list[Row]) -> bool:
    return all(_numeric_share(cells) <= 0.25 for _, cells in block) and max(len({c for c in cells if c}) for _, cells in block) > 1


def _numeric_share(cells: list[str]) -> float:
    filled = [c for c in cells if c]
    return sum(1 for c in filled if _is_number(c)) / len(filled) if filled else 0.0


def table_segments(rows: list[Row], location: Location, header_first: bool = False) -> list[ParsedSegment]:
    """Split a sheet into tables at blank rows; in each, a one-cell first row is its title and the
    rows before the first numeric row are its header (several header rows are joined per column).
    With `header_first` (CSV) the first row is always the header."""
    segments = []
    blocks = _blocks(rows)
    csv_header: tuple[int | None, list[str]] | None = None
    for index, block in enumerate(blocks):
        if not header_first and _header_only(block) and index + 1 < len(blocks) and _numeric_share(blocks[index + 1][0][1]) > 0.25:
            # Header rows set apart from their numbers by a blank row (common in reports): the
            # next block's header.
            blocks[index + 1] = block + blocks[index + 1]
            continue
        if header_first and csv_header is not None:
            # A CSV has one header, its first row: blank lines further down do not start tables.
            title, header, body = None, (None, csv_header[1]), block
        else:
            title, header, body = _split_table(block, header_first)
            if header_first:
                csv_header = header
        context: list[tuple[str, int | None]] = []  # the title and header lines, with their row numbers
        if title:
            context.append((title[1], title[0]))
        if header:
            context.append((header_line(header[1]), header[0]))
        names = header[1] if header else []
        rows_text = [(line[0], number) for number, cells in body for line in [table_row_lines(names, [cells])] if line]
        heading = short_heading(title[1]) if title else None
        segment_location = Location(location.kind, location.page, sheet=location.sheet, heading=heading)
        segments.extend(_table_parts(context, rows_text, segment_location))
    return segments


def _table_parts(context: list[tuple[str, int | None]], rows: list[tuple[str, int]], location: Location) -> list[ParsedSegment]:
    """A table as segments of at most MAX_SEGMENT_CHARS, each opening with the table's title and
    header lines, so every part of a long sheet says what its columns are. The repeated lines
    carry no row number: a part's rows are its own."""
    parts: list[ParsedSegment] = []
    lines: list[str] = []
    starts: list[tuple[int, int]] = []
    offset = 0

    def add(line: str, row_number: int | None) -> None:
        nonlocal offset
        if row_number is not None:
            starts.append((offset, row_number))
        lines.append(line)
        offset += len(line) + 1

    def close() -> None:
        nonlocal lines, starts, offset
        text = "\n".join(lines)
        if text.strip():
            parts.append(ParsedSegment(text, location, row_starts=tuple(starts)))
        lines, starts, offset = [], [], 0

    for line, number in context:
        add(line, number)
    body_in_part = 0
    for line, number in rows:
        if body_in_part and offset + len(line) > MAX_SEGMENT_CHARS:
            close()
            for context_line, _ in context:
                add(context_line, None)
            body_in_part = 0
        add(line, number)
        body_in_part += 1
    close()
    return parts


def _blocks(rows: list[Row]) -> list[list[Row]]:
    blocks: list[list[Row]] = [[]]
    for number, cells in rows:
        if any(cells):
            blocks[-1].append((number, cells))
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def _split_table(block: list[Row], header_first: bool) -> tuple[tuple[int, str] | None, tuple[int, list[str]] | None, list[Row]]:
    title = None
    # A title is one value (a merged title cell repeats it) above a row of several.
    if not header_first and len(block) > 1 and len({c for c in block[0][1] if c}) == 1 and len({c for c in block[1][1] if c}) > 1:
        title = (block[0][0], next(c for c in block[0][1] if c))
        block = block[1:]
    if header_first:
        return title, (block[0][0], block[0][1]), block[1:]
    first_numeric = next((i for i, (_, cells) in enumerate(block) if _numeric_share(cells) > 0.25), None)
    if first_numeric is None:  # no numbers: a text table, its first row names the columns
        first_numeric = 1 if len(block) > 1 else 0
    if first_numeric == 0:
        return title, None, block
    header_rows = block[:first_numeric]
    width = max(len(cells) for _, cells in header_rows)
    names = []
    for column in range(width):
        parts = []
        for _, cells in header_rows:
            value = cells[column] if column < len(cells) else ""
            if value and value not in parts:
                parts.append(value)
        names.append(" ".join(parts))
    return title, (header_rows[0][0], names), block[first_numeric:]
