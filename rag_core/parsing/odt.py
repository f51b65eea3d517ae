"""OpenDocument text (.odt) with odfpy: headings, paragraphs, lists and tables in order."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rag_core.parsing.base import DocumentParseError, ParsedDocument, grid_lines
from rag_core.parsing.office import open_package
from rag_core.parsing.sections import SectionBuilder

LIBRARY = "odfpy"
REVISION = 1

TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"


def parse(data: bytes, passwords: Sequence[str]) -> ParsedDocument:
    from odf.opendocument import load

    package = open_package(data, "odt", ())
    try:
        document = load(io.BytesIO(package))
    except Exception as exc:
        raise DocumentParseError(f"unreadable .odt document: {type(exc).__name__}: {exc}") from exc
    builder = SectionBuilder()
    _blocks(document.text, builder)
    return ParsedDocument(builder.finish())


def _name(node: Any) -> tuple[str, str]:
    return getattr(node, "qname", ("", ""))


def _blocks(node: Any, builder: SectionBuilder, list_depth: int = 0) -> None:
    for child in node.childNodes:
        namespace, local = _name(child)
        if namespace == TEXT and local == "h":
            level = child.getAttribute("outlinelevel") if _has_attribute(child, "outlinelevel") else "1"
            builder.heading_block(int(level) if str(level).isdigit() else 1, _text(child))
        elif namespace == TEXT and local == "p":
            text = _text(child)
            builder.block(f"{'  ' * max(0, list_depth - 1)}- {text}" if list_depth and text.strip() else text)
        elif namespace == TEXT and local in ("list", "list-item", "section", "list-header"):
            _blocks(child, builder, list_depth + (1 if local == "list" else 0))
        elif namespace == TABLE and local == "table":
            builder.block("\n".join(_table_lines(child)))
        elif child.childNodes and namespace == TEXT:
            _blocks(child, builder, list_depth)


def _has_attribute(node: Any, name: str) -> bool:
    try:
        return bool(node.getAttribute(name))
    except Exception:
        return False


def _text(node: Any) -> str:
    from odf import teletype

    return teletype.extractText(node)


def _table_lines(table: Any) -> list[str]:
    grid: list[list[str]] = []
    for row in table.getElementsByType(_table_row()):
        values: list[str] = []
        for cell in row.childNodes:
            if _name(cell)[1] not in ("table-cell", "covered-table-cell"):
                continue
            text = " ".join(" ".join(_text(p) for p in cell.childNodes).split())
            repeat = cell.getAttribute("numbercolumnsrepeated") if _has_attribute(cell, "numbercolumnsrepeated") else 1
            values.extend([text] * min(int(repeat or 1), 50))
        grid.append(values)
    return grid_lines(grid)


def _table_row() -> Any:
    from odf.table import TableRow

    return TableRow
