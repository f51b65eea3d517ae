"""Builds section segments from a stream of headings and blocks, as Word, OpenDocument, HTML and
EPUB parsers produce them: each heading starts a section whose text begins with the heading and
whose location carries the heading path."""

from __future__ import annotations

from rag_core.location import Location
from rag_core.parsing.base import ParsedSegment, short_heading


class SectionBuilder:
    def __init__(self, page: int = 1, root: str | None = None):
        self.page = page
        self._path: list[tuple[int, str]] = [(0, root)] if root else []
        self._blocks: list[str] = []
        self.segments: list[ParsedSegment] = []

    @property
    def heading(self) -> str | None:
        return " > ".join(title for _, title in self._path) or None

    def heading_block(self, level: int, title: str) -> None:
        """A heading of `level` (1 = top) closes the current section and opens its own."""
        title = " ".join(title.split())
        if not title:
            return
        self.flush()
        self._path = [(lvl, t) for lvl, t in self._path if lvl < level] + [(level, short_heading(title))]
        self._blocks.append(title)

    def block(self, text: str) -> None:
        if text.strip():
            self._blocks.append(text.strip("\n"))

    def flush(self) -> None:
        text = "\n\n".join(self._blocks)
        if text.strip():
            self.segments.append(ParsedSegment(text, Location("section", self.page, heading=self.heading)))
        self._blocks = []

    def finish(self) -> list[ParsedSegment]:
        self.flush()
        return self.segments
