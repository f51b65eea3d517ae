"""What every format's parser returns: segments of text, each with one location, or a reason why not."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag_core.location import Location

NO_TEXT_REASON = "no extractable text"


class DocumentParseError(Exception):
    """The file cannot yield text; `reason` is what the ingest summary records."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedSegment:
    """A span of a document with one location: a PDF page, a slide, a sheet's rows, a section.
    Chunks never cross segments, so every chunk has one location."""

    text: str
    location: Location = field(default_factory=Location)
    # (offset in `text` where a table row starts, that row's number in its sheet), ascending;
    # gives each chunk of a sheet its row range.
    row_starts: tuple[tuple[int, int], ...] = ()
    # Mean Tesseract word confidence (0-100) when the text came from OCR, else None.
    ocr_confidence: float | None = None

    @property
    def ocr(self) -> bool:
        return self.ocr_confidence is not None

    def rows_between(self, start: int, end: int) -> tuple[int, int] | None:
        """The first and last row that text[start:end] touches, if this segment has rows."""
        rows = [row for offset, row in self.row_starts if offset < end]
        if not rows:
            return None
        before = [row for offset, row in self.row_starts if offset <= start]
        return (before[-1] if before else rows[0]), rows[-1]


@dataclass
class ParsedDocument:
    segments: list[ParsedSegment]
    # Parts of an otherwise indexed file that yielded nothing ("page 4: OCR found no text"):
    # reported with the file, never dropped silently.
    incomplete: list[str] = field(default_factory=list)
    # The OCR engine that read some of it (its signature: "tesseract 5.3.0 eng+fra+nld+kor ocr-r1"),
    # "unavailable" when pages needed one and none was installed, "" when no page needed OCR.
    # Part of the file's parse signature.
    ocr_engine: str = ""
    # The document's own title where it states one (a text file's title line, a PDF's or an
    # Office file's metadata title, HTML's <title>); indexed with every chunk (rag_core.contextual).
    title: str | None = None

    @property
    def text_chars(self) -> int:
        return sum(len(segment.text.strip()) for segment in self.segments)


# What authoring tools put in a document's title field when the author gave none: file names,
# program names, placeholders. Seen in the shared PDFs: 'zen_of_python.txt', 'Sample Dexa
# Report.PDF', 'Agriculture Statistics 2012-13..psd', '10811.exe', 'Microsoft Word - SPECIAL BOARD
# AGENDA 040616.doc', 'Untitled', 'Adobe Photoshop PDF', '88300 162..177', '905_Precinct_NoOU'.
_FILE_NAME = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,4}$")
_TOOL_PREFIX = re.compile(r"^(microsoft (word|powerpoint|excel)|adobe \w+|powerpoint presentation)\b", re.IGNORECASE)
_PLACEHOLDERS = frozenset({"untitled", "untitled document", "document", "new document", "presentation", "slide 1", "title", "pdf"})


def document_title(raw: str | None) -> str | None:
    """A title field's value when it reads as a title, else None. A title is used as context for
    every chunk of its document (rag_core.contextual), so a wrong one does more harm than none:
    one word ('grasshopper', 'SingleTable'), a file or program name, or mostly digits is refused."""
    title = " ".join(str(raw or "").split())
    if not 3 <= len(title) <= 200 or " " not in title:
        return None
    if _FILE_NAME.search(title) or _TOOL_PREFIX.match(title) or title.casefold() in _PLACEHOLDERS:
        return None
    letters = sum(character.isalpha() for character in title)
    return title if letters >= 0.6 * len(title.replace(" ", "")) else None


def header_line(header: Sequence[str]) -> str:
    """A row as one line of its non-empty cells."""
    return " | ".join(value for value in (" ".join(str(cell).split()) for cell in header) if value)


def looks_numeric(text: str) -> bool:
    """A figure: 26,347 or -4.2 or (81) or 34.5%."""
    return bool(re.fullmatch(r"[-+(]?[\d.,]+%?\)?", text.strip())) and any(c.isdigit() for c in text)


def grid_lines(grid: Sequence[Sequence[str]]) -> list[str]:
    """A table from a document (Word, PowerPoint, OpenDocument) as lines: its first row names the
    columns unless it holds figures (then no row does); one-row and one-column tables are plain."""
    grid = [list(row) for row in grid if any(str(cell).strip() for cell in row)]
    if not grid:
        return []
    if len(grid) == 1 or max(len(row) for row in grid) == 1 or any(looks_numeric(c) for c in grid[0] if c):
        return [header_line(row) for row in grid]
    return [header_line(grid[0])] + table_row_lines(grid[0], grid[1:])


def short_heading(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def clean_text(text: str) -> str:
    # NUL bytes appear in some PDF text layers and break downstream stores.
    return text.replace("\x00", "")


def table_row_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Each row as 'Column: value | Column: value', so a cell is retrievable with its meaning.
    Empty cells are left out; a column without a header keeps the bare value. Every other cell is
    kept, equal neighbours included (a merged cell reads under each column it spans)."""
    lines = []
    for row in rows:
        cells: list[str] = []
        for position, value in enumerate(row):
            value = " ".join(str(value).split())
            if not value:
                continue
            name = " ".join(str(header[position]).split()) if position < len(header) else ""
            cells.append(f"{name}: {value}" if name and name != value else value)
        if cells:
            lines.append(" | ".join(cells))
    return lines
