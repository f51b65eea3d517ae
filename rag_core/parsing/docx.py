"""Word (.docx) with python-docx: paragraphs, headings, lists, tables (rows with their column
headers), text boxes, equations, comments, headers and footers, in document order."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from rag_core.parsing.base import ParsedDocument, document_title, grid_lines
from rag_core.parsing.office import open_package
from rag_core.parsing.sections import SectionBuilder

LIBRARY = "python-docx"
REVISION = 2

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_HEADING_STYLE = re.compile(r"^(?:heading|überschrift|titre)\s*(\d)$", re.IGNORECASE)


def parse(data: bytes, passwords: Sequence[str]) -> ParsedDocument:
    import docx

    document = docx.Document(io.BytesIO(open_package(data, "docx", passwords)))
    styles = {style.style_id: style.name for style in document.styles if style.style_id}
    builder = SectionBuilder()
    _blocks(document.element.body, builder, styles)
    extras = _comments(document) + _headers_and_footers(document)
    if extras:
        builder.heading_block(1, "Comments, headers and footers")
        for text in extras:
            builder.block(text)
    return ParsedDocument(builder.finish(), title=document_title(document.core_properties.title))


def _blocks(container: Any, builder: SectionBuilder, styles: dict[str, str]) -> None:
    for element in container.iterchildren():
        if element.tag == f"{W}p":
            _paragraph(element, builder, styles)
        elif element.tag == f"{W}tbl":
            builder.block("\n".join(_table_lines(element, styles)))
        elif element.tag == f"{W}sdt":
            content = element.find(f"{W}sdtContent")
            if content is not None:
                _blocks(content, builder, styles)


def _paragraph(element: Any, builder: SectionBuilder, styles: dict[str, str]) -> None:
    text = paragraph_text(element)
    properties = element.find(f"{W}pPr")
    level = _heading_level(properties, styles)
    if level is not None and text.strip():
        builder.heading_block(level, text)
    elif properties is not None and properties.find(f"{W}numPr") is not None and text.strip():
        builder.block(f"- {text.strip()}")
    else:
        builder.block(text)
    # Text boxes anchored in this paragraph follow it (DrawingML only: the VML fallback repeats them).
    for box in _outside_fallback(element, f"{W}txbxContent"):
        _blocks(box, builder, styles)


def _heading_level(properties: Any, styles: dict[str, str]) -> int | None:
    if properties is None:
        return None
    style = properties.find(f"{W}pStyle")
    name = styles.get(style.get(f"{W}val"), style.get(f"{W}val")) if style is not None else ""
    if name == "Title":
        return 1
    match = _HEADING_STYLE.match(name or "")
    if match:
        return int(match.group(1))
    outline = properties.find(f"{W}outlineLvl")
    if outline is not None and (outline.get(f"{W}val") or "").isdigit() and int(outline.get(f"{W}val")) < 9:
        return int(outline.get(f"{W}val")) + 1
    return None


def _outside_fallback(element: Any, tag: str) -> list[Any]:
    found = []
    for node in element.iter(tag):
        if not any(parent.tag == MC_FALLBACK for parent in node.iterancestors()):
            found.append(node)
    return [node for node in found if not any(parent.tag == f"{W}txbxContent" for parent in node.iterancestors() if parent is not element)]


def paragraph_text(element: Any) -> str:
    """The visible text of a paragraph: runs, tabs, breaks and equations, without text boxes
    (read as blocks of their own), VML fallbacks, deleted revisions or field codes."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        for child in node.iterchildren():
            tag = child.tag
            if tag in (MC_FALLBACK, f"{W}txbxContent", f"{W}delText", f"{W}instrText", f"{W}del"):
                continue
            if tag in (f"{W}t", f"{M}t"):
                parts.append(child.text or "")
            elif tag == f"{W}tab":
                parts.append("\t")
            elif tag in (f"{W}br", f"{W}cr"):
                parts.append("\n")
            else:
                walk(child)

    walk(element)
    return "".join(parts)


def _cell_text(cell: Any) -> str:
    lines = []
    for element in cell.iterchildren():
        if element.tag == f"{W}p":
            lines.append(paragraph_text(element))
        elif element.tag == f"{W}tbl":  # a nested table: its rows, inline
            lines.extend(_table_lines(element, {}))
    return "\n".join(line for line in lines if line.strip())


def _table_lines(element: Any, styles: dict[str, str]) -> list[str]:
    from docx.table import Table

    table = Table(element, None)
    grid: list[list[str]] = []
    for row in table.rows:
        try:
            # A merged cell is returned for every grid cell it covers, so columns stay aligned.
            row_cells = row.cells
        except Exception:  # a malformed grid
            row_cells = []
        grid.append([" ".join(_cell_text(cell._tc).split()) for cell in row_cells])
    return grid_lines(grid)


def _comments(document: Any) -> list[str]:
    try:
        comments = document.comments
    except Exception:  # python-docx without comment support, or no comments part
        return []
    texts = []
    for comment in comments:
        text = " ".join(comment.text.split()) if getattr(comment, "text", None) else ""
        if text:
            author = getattr(comment, "author", "") or ""
            texts.append(f"Comment{' by ' + author if author else ''}: {text}")
    return texts


def _headers_and_footers(document: Any) -> list[str]:
    seen: list[str] = []
    for section in document.sections:
        for part in (
            section.header,
            section.first_page_header,
            section.even_page_header,
            section.footer,
            section.first_page_footer,
            section.even_page_footer,
        ):
            try:
                if part.is_linked_to_previous:
                    continue
                text = "\n".join(paragraph_text(p._p) for p in part.paragraphs).strip()
            except Exception:
                continue
            if text and text not in seen:
                seen.append(text)
    return seen
