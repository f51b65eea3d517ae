"""Document parsing: bytes of a PDF, .txt or .md file into page texts, or a recorded reason why not."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Sequence

from pypdf import PdfReader
from pypdf.errors import DependencyError, PdfReadError, PyPdfError

# pypdf logs a warning for every recoverable oddity in real-world files; the outcome we
# care about (text or a failure reason) is recorded per file instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)

NO_TEXT_REASON = "no extractable text"


class DocumentParseError(Exception):
    """The file cannot yield text; `reason` is what the ingest summary records."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedPage:
    number: int  # 1-based; a text file is a single page 1
    text: str


class DocumentParser:
    """Turns one file's bytes into pages of text. PDFs keep their page numbers."""

    def __init__(self, pdf_passwords: Sequence[str] = ()):
        self.pdf_passwords = list(pdf_passwords)

    def parse(self, filename: str, data: bytes) -> list[ParsedPage]:
        if not data:
            raise DocumentParseError("empty file (0 bytes)")
        if filename.lower().endswith(".pdf"):
            pages = self._parse_pdf(data)
        else:
            # Non-UTF-8 bytes are replaced rather than refused: one odd byte must not lose a file.
            pages = [ParsedPage(1, _clean(data.decode("utf-8-sig", errors="replace")))]
        if not any(page.text.strip() for page in pages):
            raise DocumentParseError(NO_TEXT_REASON)
        return pages

    def _parse_pdf(self, data: bytes) -> list[ParsedPage]:
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                self._decrypt(reader)
            pages = []
            for number, page in enumerate(reader.pages, start=1):
                pages.append(ParsedPage(number, _clean(page.extract_text() or "")))
            return pages
        except DocumentParseError:
            raise
        except (PdfReadError, PyPdfError) as exc:
            raise DocumentParseError(f"malformed PDF: {exc}") from exc
        except Exception as exc:  # pypdf raises assorted errors on corrupt structures
            raise DocumentParseError(f"malformed PDF: {type(exc).__name__}: {exc}") from exc

    def _decrypt(self, reader: PdfReader) -> None:
        for password in ["", *self.pdf_passwords]:
            try:
                if reader.decrypt(password):
                    return
            except (NotImplementedError, DependencyError) as exc:
                raise DocumentParseError(f"encrypted PDF: unsupported encryption ({exc})") from exc
        raise DocumentParseError("encrypted PDF: no configured password opens it (ingest.pdf_passwords)")


def _clean(text: str) -> str:
    # NUL bytes appear in some PDF text layers and break downstream stores.
    return text.replace("\x00", "")

