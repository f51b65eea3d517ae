"""Document parsing: one file's bytes into located text segments, or a recorded reason why not.

One module per format (pdf, docx, pptx, spreadsheet, html, epub, odt, text) and the OCR step for
scans and images; `DocumentParser` picks by extension and checks that something was read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from types import ModuleType
from typing import Any

from rag_core.parsing import docx, epub, html, ocr_pages, odt, pdf, pptx, spreadsheet, text
from rag_core.parsing import pdf_tables as pdf_tables_module
from rag_core.parsing.base import NO_TEXT_REASON, DocumentParseError, ParsedDocument, ParsedSegment
from rag_core.parsing.ocr_pages import OCR_UNAVAILABLE, OcrPages

__all__ = [
    "NO_TEXT_REASON",
    "OCR_UNAVAILABLE",
    "SUPPORTED_EXTENSIONS",
    "DocumentParseError",
    "DocumentParser",
    "ParsedDocument",
    "ParsedSegment",
    "format_of",
    "parser_signature",
]


@dataclass(frozen=True)
class Format:
    name: str
    module: ModuleType
    library: str  # the distribution whose version is part of the parse signature
    revision: int  # this project's parser revision for the format: bump when its output changes


IMAGE_REVISION = 1
_FORMATS: dict[str, Format] = {
    ".pdf": Format("pdf", pdf, pdf.LIBRARY, pdf.REVISION),
    ".txt": Format("text", text, text.LIBRARY, text.REVISION),
    ".md": Format("markdown", text, text.LIBRARY, text.REVISION),
    ".markdown": Format("markdown", text, text.LIBRARY, text.REVISION),
    ".docx": Format("docx", docx, docx.LIBRARY, docx.REVISION),
    ".pptx": Format("pptx", pptx, pptx.LIBRARY, pptx.REVISION),
    ".xlsx": Format("xlsx", spreadsheet, spreadsheet.LIBRARY, spreadsheet.REVISION),
    ".csv": Format("csv", spreadsheet, "charset-normalizer", spreadsheet.CSV_REVISION),
    ".tsv": Format("csv", spreadsheet, "charset-normalizer", spreadsheet.CSV_REVISION),
    ".html": Format("html", html, html.LIBRARY, html.REVISION),
    ".htm": Format("html", html, html.LIBRARY, html.REVISION),
    ".xhtml": Format("html", html, html.LIBRARY, html.REVISION),
    ".epub": Format("epub", epub, epub.LIBRARY, epub.REVISION),
    ".odt": Format("odt", odt, odt.LIBRARY, odt.REVISION),
    ".png": Format("image", ocr_pages, "pillow", IMAGE_REVISION),
    ".jpg": Format("image", ocr_pages, "pillow", IMAGE_REVISION),
    ".jpeg": Format("image", ocr_pages, "pillow", IMAGE_REVISION),
    ".tif": Format("image", ocr_pages, "pillow", IMAGE_REVISION),
    ".tiff": Format("image", ocr_pages, "pillow", IMAGE_REVISION),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(sorted(_FORMATS))


def format_of(filename: str) -> Format:
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename.rsplit("/", 1)[-1] else ""
    found = _FORMATS.get(suffix)
    if found is None:
        raise DocumentParseError(f"unsupported file type {suffix or '(none)'}")
    return found


@cache
def _library_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "missing"


def parser_signature(filename: str, pdf_tables: bool = True) -> str:
    """What decides how a file of this type is read, besides its bytes: 'docx/1 python-docx 1.2.0'.
    Recorded per file; a change re-parses the files it affects."""
    fmt = format_of(filename)
    signature = f"{fmt.name}/{fmt.revision} {fmt.library} {_library_version(fmt.library)}"
    if fmt.name == "pdf" and pdf_tables:
        signature += f" + tables/{pdf_tables_module.REVISION} {pdf_tables_module.LIBRARY} {_library_version(pdf_tables_module.LIBRARY)}"
    return signature


class DocumentParser:
    """Turns one file's bytes into located text segments. PDFs keep their page numbers, slides
    their numbers, sheets their names and rows, sections their headings; pages without text and
    image files are read by OCR when an engine is configured and installed."""

    def __init__(
        self, passwords: Sequence[str] = (), ocr_factory: Callable[[], Any] | None = None, ocr_dpi: int = 300, pdf_tables: bool = True
    ):
        self.passwords = list(passwords)
        self.ocr = OcrPages(ocr_factory, ocr_dpi)
        self.pdf_tables = pdf_tables

    def parse(self, filename: str, data: bytes) -> ParsedDocument:
        fmt = format_of(filename)
        if not data:
            raise DocumentParseError("empty file (0 bytes)")
        document = self._read(fmt, filename, data)
        if not document.text_chars:
            if document.incomplete:
                raise DocumentParseError("; ".join(document.incomplete))
            raise DocumentParseError(NO_TEXT_REASON)
        document.segments = [segment for segment in document.segments if segment.text.strip()]
        return document

    def _read(self, fmt: Format, filename: str, data: bytes) -> ParsedDocument:
        name = fmt.name
        if name == "pdf":
            return pdf.parse(data, self.passwords, self.ocr, self.pdf_tables)
        if name == "image":
            return self.ocr.read_image(data)
        if name == "text":
            return text.parse_plain(data)
        if name == "markdown":
            return text.parse_markdown(data)
        if name == "csv":
            return spreadsheet.parse_csv(data, filename)
        if name == "xlsx":
            return spreadsheet.parse_xlsx(data, self.passwords)
        if name in ("docx", "pptx", "odt"):
            return fmt.module.parse(data, self.passwords)
        return fmt.module.parse(data)  # html, epub
