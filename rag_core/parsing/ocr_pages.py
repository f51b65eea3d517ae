"""The OCR step of parsing: only pages that need it, with the engine and every gap recorded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from rag_core.location import Location
from rag_core.parsing.base import DocumentParseError, ParsedDocument, ParsedSegment

OCR_UNAVAILABLE = "unavailable"


def pages_label(numbers: Sequence[int]) -> str:
    """'page 3' or 'pages 1-3, 5'."""
    return f"{'page' if len(numbers) == 1 else 'pages'} {page_ranges(numbers)}"


def page_ranges(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class OcrPages:
    """Reads page images with an OCR engine made on first use (`engine_factory`), so a worker that
    parses no scan never starts one. Without an engine, the pages are reported, not guessed."""

    def __init__(self, engine_factory: Callable[[], Any] | None, dpi: int = 300):
        self._factory = engine_factory
        self._engine: Any = None
        self._unavailable: str | None = None if engine_factory else "OCR is turned off (ingest.ocr.enabled)"
        self.dpi = dpi

    def engine(self) -> Any | None:
        """The engine, or None with `unavailable_reason` set."""
        if self._engine is None and self._unavailable is None:
            from rag_core.ocr import OcrUnavailable

            try:
                engine = self._factory()
                _ = engine.engine  # probes the binary and its languages
                self._engine = engine
            except OcrUnavailable as exc:
                self._unavailable = exc.reason
        return self._engine

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def read_pdf_pages(self, document: ParsedDocument, data: bytes, pages: Sequence[int], password: str | None) -> None:
        engine = self.engine()
        if engine is None:
            document.ocr_engine = OCR_UNAVAILABLE
            document.incomplete.append(f"{pages_label(pages)} {'is an image' if len(pages) == 1 else 'are images'}: {self._unavailable}")
            return
        from rag_core.ocr import OcrError, render_pdf_page

        document.ocr_engine = engine.signature
        empty = []
        for number in pages:
            try:
                result = engine.read(render_pdf_page(data, number, self.dpi, password))
            except (OcrError, ValueError) as exc:  # one unreadable page; the others still count
                document.incomplete.append(f"page {number}: OCR failed: {exc}")
                continue
            if not result.text.strip():
                empty.append(number)
                continue
            old = document.segments[number - 1]
            document.segments[number - 1] = replace(old, text=result.text, ocr_confidence=round(result.confidence, 1))
        if empty:
            document.incomplete.append(f"{pages_label(empty)}: OCR found no text")

    def read_image(self, data: bytes) -> ParsedDocument:
        """Every frame of a PNG, JPEG or TIFF file through OCR; a frame is a page."""
        engine = self.engine()
        if engine is None:
            raise DocumentParseError(f"image file: {self._unavailable}")
        from rag_core.ocr import OcrError, image_frames

        try:
            frames = image_frames(data)
        except ValueError as exc:
            raise DocumentParseError(f"unreadable image: {exc}") from exc
        document = ParsedDocument([], ocr_engine=engine.signature)
        empty = []
        for number, frame in enumerate(frames, start=1):
            try:
                result = engine.read(frame)
            except OcrError as exc:
                document.incomplete.append(f"{'frame ' + str(number) if len(frames) > 1 else 'image'}: OCR failed: {exc}")
                continue
            if result.text.strip():
                document.segments.append(ParsedSegment(result.text, Location("page", number), ocr_confidence=round(result.confidence, 1)))
            else:
                empty.append(number)
        if empty:
            document.incomplete.append(f"{'frames ' + page_ranges(empty) if len(frames) > 1 else 'image'}: OCR found no text")
        return document
