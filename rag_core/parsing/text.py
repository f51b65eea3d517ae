"""Plain text (.txt) and Markdown (.md): one segment per file, or per heading in Markdown."""

from __future__ import annotations

import re

from rag_core.location import Location
from rag_core.parsing.base import ParsedDocument, ParsedSegment
from rag_core.parsing.encoding import decode_text

LIBRARY = "charset-normalizer"
REVISION = 3

_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")
MAX_TITLE_CHARS = 200


def parse_plain(data: bytes) -> ParsedDocument:
    text, _ = decode_text(data)
    return ParsedDocument([ParsedSegment(text, Location("page", 1))], title=title_line(text))


def title_line(text: str) -> str | None:
    """A text file's title: a short first line set apart from the text under it by a blank line."""
    lines = text.lstrip().split("\n", 2)
    if len(lines) < 3 or lines[1].strip() or not lines[2].strip():
        return None
    title = " ".join(lines[0].split())
    return title if 0 < len(title) <= MAX_TITLE_CHARS and not title.endswith((".", ":", ",", ";")) else None


def parse_markdown(data: bytes) -> ParsedDocument:
    """Sections at ATX headings (outside fenced code), each with its heading path; the heading line
    stays in its section's text, so a section's first chunk carries its heading."""
    text, _ = decode_text(data)
    segments: list[ParsedSegment] = []
    path: list[tuple[int, str]] = []
    start = 0
    in_fence = False
    offset = 0
    heading: str | None = None
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if _FENCE.match(stripped):
            in_fence = not in_fence
        match = None if in_fence else _ATX_HEADING.match(stripped)
        if match:
            if text[start:offset].strip():
                segments.append(ParsedSegment(text[start:offset], Location("section", 1, heading=heading)))
            level = len(match.group(1))
            path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2).strip())]
            heading = " > ".join(title for _, title in path)
            start = offset
        offset += len(line)
    if text[start:].strip():
        segments.append(ParsedSegment(text[start:], Location("section", 1, heading=heading)))
    if not segments:
        segments = [ParsedSegment(text, Location("section", 1))]
    return ParsedDocument(segments)
