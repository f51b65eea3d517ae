"""PowerPoint (.pptx) with python-pptx: one segment per slide (its number is the page), holding the
title, text frames in reading order (groups included), tables with their headers, chart data and
the speaker notes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rag_core.location import Location
from rag_core.parsing.base import ParsedDocument, ParsedSegment, document_title, grid_lines, short_heading
from rag_core.parsing.office import open_package

LIBRARY = "python-pptx"
REVISION = 2


def parse(data: bytes, passwords: Sequence[str]) -> ParsedDocument:
    from pptx import Presentation

    presentation = Presentation(io.BytesIO(open_package(data, "pptx", passwords)))
    segments = []
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None and title_shape.has_text_frame else ""
        blocks = [title] if title else []
        for shape in _reading_order(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            blocks.extend(_shape_blocks(shape))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame.text.strip() if slide.notes_slide.notes_text_frame else ""
            if notes:
                blocks.append(f"Notes: {notes}")
        text = "\n\n".join(block for block in blocks if block.strip())
        if text.strip():
            segments.append(ParsedSegment(text, Location("slide", number, slide=number, heading=short_heading(title) if title else None)))
    return ParsedDocument(segments, title=document_title(presentation.core_properties.title))


def _reading_order(shapes: Any) -> list[Any]:
    """Top to bottom, then left to right (placeholders without a position keep their order)."""
    indexed = list(enumerate(shapes))
    indexed.sort(key=lambda item: ((item[1].top or 0) // 50_000, item[1].left or 0, item[0]))
    return [shape for _, shape in indexed]


def _shape_blocks(shape: Any) -> list[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        return [block for inner in _reading_order(shape.shapes) for block in _shape_blocks(inner)]
    if getattr(shape, "has_table", False) and shape.has_table:
        return ["\n".join(_table_lines(shape.table))]
    if getattr(shape, "has_chart", False) and shape.has_chart:
        return ["\n".join(_chart_lines(shape.chart))]
    if shape.has_text_frame:
        lines = []
        for paragraph in shape.text_frame.paragraphs:
            text = "".join(run.text for run in paragraph.runs) or paragraph.text
            if text.strip():
                lines.append(("  " * paragraph.level) + ("- " if paragraph.level else "") + text.strip())
        return ["\n".join(lines)] if lines else []
    return []


def _table_lines(table: Any) -> list[str]:
    rows = list(table.rows)
    grid = [[" ".join(cell.text.split()) for cell in row.cells] for row in rows]
    # A merged cell's text fills every grid cell it covers, so columns stay aligned.
    for r, row in enumerate(rows):
        for c, cell in enumerate(row.cells):
            if cell.is_merge_origin:
                for dr in range(cell.span_height):
                    for dc in range(cell.span_width):
                        if r + dr < len(grid) and c + dc < len(grid[r + dr]):
                            grid[r + dr][c + dc] = grid[r][c]
    return grid_lines(grid)


def _chart_lines(chart: Any) -> list[str]:
    """A chart's data as rows: 'Series: name | Category: value' (the values exist only in the chart)."""
    lines = []
    try:
        if chart.has_title and chart.chart_title.has_text_frame:
            title = " ".join(chart.chart_title.text_frame.text.split())
            if title:
                lines.append(f"Chart: {title}")
        for plot in chart.plots:
            categories = [str(c) for c in plot.categories]
            for series in plot.series:
                values = list(series.values)
                cells = [f"{category}: {_number(value)}" for category, value in zip(categories, values) if value is not None]
                if cells:
                    lines.append(f"{series.name}: " + " | ".join(cells))
    except Exception:  # chart XML python-pptx cannot read: keep what was read
        pass
    return lines


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.15g}" if isinstance(value, float) else str(value)
