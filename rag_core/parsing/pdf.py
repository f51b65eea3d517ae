"""PDF: pypdf's text layer page by page; pages without one go through OCR when they hold images."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from pypdf import PdfReader
from pypdf.errors import DependencyError, PdfReadError, PyPdfError

from rag_core.location import Location
from rag_core.parsing.base import DocumentParseError, ParsedDocument, ParsedSegment, clean_text, document_title
from rag_core.parsing.ocr_pages import OcrPages
from rag_core.parsing.pdf_tables import table_page_texts, tabular_pages

# pypdf logs a warning for every recoverable oddity in real-world files; the outcome we care about
# (text or a failure reason) is recorded per file instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)

LIBRARY = "pypdf"
REVISION = 4
# A page with less text than this (non-space characters) and an image is a scan.
MIN_TEXT_LAYER_CHARS = 20


def parse(data: bytes, passwords: Sequence[str], ocr: OcrPages, tables: bool = True) -> ParsedDocument:
    """Pages of text; with `tables`, pages whose text looks tabular are read again by pdfplumber,
    which keeps each ruled table's rows with their column headers (measured: README, Results)."""
    try:
        reader = PdfReader(io.BytesIO(data))
        password = _decrypt(reader, passwords) if reader.is_encrypted else None
        texts = [clean_text(page.extract_text() or "") for page in reader.pages]
        scans = [
            number
            for number, page in enumerate(reader.pages, start=1)
            if len("".join(texts[number - 1].split())) < MIN_TEXT_LAYER_CHARS and _has_images(page)
        ]
    except DocumentParseError:
        raise
    except (PdfReadError, PyPdfError) as exc:
        raise DocumentParseError(f"malformed PDF: {exc}") from exc
    except Exception as exc:  # pypdf raises assorted errors on corrupt structures
        raise DocumentParseError(f"malformed PDF: {type(exc).__name__}: {exc}") from exc
    if tables:
        replaced = table_page_texts(data, tabular_pages(texts), password)
        texts = [clean_text(replaced.get(number, text)) for number, text in enumerate(texts, start=1)]
    segments = [ParsedSegment(text, Location("page", number)) for number, text in enumerate(texts, start=1)]
    document = ParsedDocument(segments, title=_metadata_title(reader))
    if scans:
        ocr.read_pdf_pages(document, data, scans, password)
    return document


def _decrypt(reader: PdfReader, passwords: Sequence[str]) -> str:
    for password in ["", *passwords]:
        try:
            if reader.decrypt(password):
                return password
        except (NotImplementedError, DependencyError) as exc:
            raise DocumentParseError(f"encrypted PDF: unsupported encryption ({exc})") from exc
    raise DocumentParseError("encrypted PDF: no configured password opens it (ingest.passwords)")


def _has_images(page: Any, depth: int = 0) -> bool:
    """Whether the page draws an image, directly or inside a form XObject (scanners nest them)."""
    try:
        resources = page["/Resources"] if depth == 0 else page.get("/Resources")
        resources = resources.get_object() if resources is not None else None
        xobjects = resources.get("/XObject") if resources is not None else None
        if xobjects is None:
            return False
        for ref in xobjects.get_object().values():
            xobject = ref.get_object()
            subtype = xobject.get("/Subtype")
            if subtype == "/Image":
                return True
            if subtype == "/Form" and depth < 3 and _has_images(xobject, depth + 1):
                return True
    except Exception:  # a broken resource dictionary: treat as no image, the text layer stands
        return False
    return False


def _metadata_title(reader: PdfReader) -> str | None:
    try:
        return document_title(reader.metadata.title if reader.metadata else None)
    except Exception:  # a malformed info dictionary costs the title, never the document
        return None
