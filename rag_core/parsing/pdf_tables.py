"""PDF tables through pdfplumber: a page's text with each ruled table replaced by its rows in the
project's row format (`header_line` first, then one "Column: value | Column: value" line per row),
so a cell stays next to its row label and column header. pypdf's text of a table page often loses
that association (cells in column order, numbers run together).

pdfplumber costs several times what pypdf does per page, so `looks_tabular` picks candidate pages
from pypdf's text first; `table_page_texts` then returns only the pages where pdfplumber found a
usable table. The caller keeps pypdf's text for every other page. Only ruled tables are found
(pdfplumber's "lines" strategy); tables drawn without lines keep pypdf's text. Nothing here raises
on a bad file: a page or file pdfplumber cannot read is left out of the result.
"""

from __future__ import annotations

import io
import logging
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rag_core.parsing.base import clean_text, header_line, table_row_lines

log = logging.getLogger("rag_core.parsing.pdf_tables")
# pdfminer (under pdfplumber) warns on every recoverable oddity, as pypdf does (see pdf.py).
logging.getLogger("pdfminer").setLevel(logging.ERROR)

LIBRARY = "pdfplumber"
REVISION = 1

# Gate: a page is worth pdfplumber's time when pypdf's text has at least MIN_NUMERIC_LINES lines
# made mostly of figures (MIN_FIGURES_PER_LINE of them, and at least MIN_FIGURE_SHARE of the
# line's words), or one line holding many (pypdf often runs a whole table into a few lines).
# Prose with numbers in it (citations, dates, section numbers) stays below the share.
MIN_NUMERIC_LINES = 3
MIN_FIGURES_PER_LINE = 3
MIN_FIGURE_SHARE = 1 / 3
MIN_FIGURES_ONE_LINE = 12
_FIGURE_TOKEN = re.compile(
    r"^[(\[]?[-+−–]?[$€£¥]?(?:\d{1,3}(?:[,.\u00a0]\d{3})+|\d+)(?:[.,]\d+)?%?[)\]]?[*†‡,;:]*$"
    r"|^\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}$"  # a date is one figure
)
_YEAR = re.compile(r"^\(?(?:1[89]|20)\d\d(?:\s*[-/–]\s*\d{2,4})?\)?[*†‡]*$")
# Word gaps as a share of the font size: pdfplumber's fixed 3pt default runs words together in
# tightly set text ("highlydiversesetoftables").
X_TOLERANCE_RATIO = 0.2
MAX_HEADER_ROWS = 4
# Chunks are 512 characters: a wider row is cut into lines that each repeat its label.
MAX_ROW_CHARS = 400
# Dot leaders between a row label and its figures ("Severe disability .........").
_LEADER = re.compile(r"(?:\s*\.){3,}\s*$|(?:\s*\.){3,}(?=\s)|(?<=\s)(?:\.\s*){3,}")


def looks_tabular(text: str) -> bool:
    """Whether pypdf's text of a page suggests a table of figures (cheap: a split per line)."""
    numeric = 0
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < MIN_FIGURES_PER_LINE:
            continue
        figures = sum(1 for token in tokens if _FIGURE_TOKEN.match(token))
        if figures < MIN_FIGURES_PER_LINE or figures < MIN_FIGURE_SHARE * len(tokens):
            continue
        if figures >= MIN_FIGURES_ONE_LINE:
            return True
        numeric += 1
        if numeric >= MIN_NUMERIC_LINES:
            return True
    return False


def tabular_pages(texts: Sequence[str]) -> list[int]:
    """1-based numbers of the pages whose pypdf text passes `looks_tabular`."""
    return [number for number, text in enumerate(texts, start=1) if looks_tabular(text)]


def table_page_texts(data: bytes, pages: Iterable[int] | None = None, password: str | None = None) -> dict[int, str]:
    """{page number (1-based): page text with its tables as rows} for those of `pages` (all when
    None) where pdfplumber finds at least one usable ruled table. Pages without one, pages it
    fails on, and every page of a file it cannot open are absent: keep pypdf's text for them.
    A table continued from the previous page without a header of its own (same number of
    columns, first row already figures) gets that page's header."""
    import pdfplumber  # imported here: only pages that pass the gate pay for it

    results: dict[int, str] = {}
    try:
        pdf = pdfplumber.open(io.BytesIO(data), password=password or "")
    except Exception as exc:  # pdfminer raises assorted errors on damaged files
        log.debug("pdfplumber cannot open the file: %s", exc)
        return results
    with pdf:
        try:
            count = len(pdf.pages)
        except Exception as exc:
            log.debug("pdfplumber cannot read the page tree: %s", exc)
            return results
        numbers = range(1, count + 1) if pages is None else sorted({n for n in pages if 1 <= n <= count})
        carried: dict[int, list[str]] = {}  # columns -> header, from the page just before
        previous = None
        for number in numbers:
            page = None
            text = None
            try:
                page = pdf.pages[number - 1]
                text, headers = page_text_with_tables(page, carried if previous == number - 1 else None)
                carried = headers
            except Exception as exc:
                log.debug("pdfplumber failed on page %d: %s", number, exc)
                carried = {}
            finally:
                if page is not None:
                    page.close()  # drops the page's cached layout objects
            previous = number
            if text is not None:
                results[number] = clean_text(text)
    return results


# --- one page ---------------------------------------------------------------------------------


def page_text_with_tables(page: Any, carried: dict[int, list[str]] | None = None) -> tuple[str | None, dict[int, list[str]]]:
    """(the page's text with each usable table replaced by its rows, or None when it has none;
    {columns: header} of its last tables, for a continuation on the next page)."""
    chars = page.chars
    tables: list[tuple[tuple[float, float, float, float], str]] = []
    headers: dict[int, list[str]] = {}
    boxes: list[tuple[float, float, float, float]] = []
    for table in page.find_tables():
        bbox = tuple(table.bbox)
        inside = [c for c in chars if _inside(c, bbox)]
        reach = bbox[0] - max(150.0, 0.6 * (bbox[2] - bbox[0]))
        left = [c for c in chars if reach <= c["x0"] and c["x1"] <= bbox[0] + 1 and bbox[1] <= (c["top"] + c["bottom"]) / 2 < bbox[3]]
        result = table_text(table, inside, carried, left)
        if result is not None:
            text, header, used_left = result
            tables.append((bbox, text))
            boxes.append((min(c["x0"] for c in left) - 1, bbox[1], bbox[2], bbox[3]) if used_left else bbox)
            if any(header):
                headers[len(header)] = header
            carried = None  # only the page's first table continues the previous page's
    if not tables:
        return None, headers
    rest = page.filter(lambda obj: obj.get("object_type") != "char" or not any(_inside(obj, b) for b in boxes))
    lines = rest.extract_text_lines(use_text_flow=True, return_chars=False, x_tolerance_ratio=X_TOLERANCE_RATIO)
    return _merge(lines, sorted(tables, key=lambda item: (item[0][1], item[0][0]))), headers


def _inside(obj: dict[str, Any], bbox: Sequence[float]) -> bool:
    x = (obj["x0"] + obj["x1"]) / 2
    y = (obj["top"] + obj["bottom"]) / 2
    return bbox[0] <= x < bbox[2] and bbox[1] <= y < bbox[3]


def _merge(lines: list[dict[str, Any]], tables: list[tuple[tuple[float, float, float, float], str]]) -> str:
    """Text lines in pdfplumber's text-flow order, each table placed before the first line below
    its top that overlaps it horizontally (reading order for one- and most two-column pages)."""
    blocks: list[str] = []
    current: list[str] = []
    pending = list(tables)
    for line in lines:
        placed = [t for t in pending if line["top"] >= t[0][1] - 1 and line["x0"] < t[0][2] and line["x1"] > t[0][0]]
        if placed:
            if current:
                blocks.append("\n".join(current))
                current = []
            blocks.extend(text for _, text in placed)
            pending = [t for t in pending if t not in placed]
        current.append(line["text"])
    if current:
        blocks.append("\n".join(current))
    blocks.extend(text for _, text in pending)
    return "\n\n".join(block for block in blocks if block.strip())


# --- one table --------------------------------------------------------------------------------


@dataclass
class _Slot:
    text: str  # the owning cell's text ("" when empty)
    own: bool  # the cell starts here; False: covered by a cell spanning from the left or above
    from_left: bool  # covered by a cell spanning from the left (a horizontal merge)
    owner: tuple[int, int]  # (row, column) of the cell that covers this slot
    chars: list[dict[str, Any]] = field(default_factory=list)  # the cell's characters, where it starts


def table_text(
    table: Any,
    chars: list[dict[str, Any]],
    carried: dict[int, list[str]] | None = None,
    left: list[dict[str, Any]] | None = None,
) -> tuple[str, list[str], bool] | None:
    """(the table as text lines: title rows, header line, one line per row with section labels
    and notes in place; its header, one name per grid column; whether the row labels came from
    `left`, the characters just left of the table). None when it is no real table (one column,
    under two rows with two values, or text rotated with the whole table). Row labels printed
    left of the ruling (dot leaders and all) are taken when the first ruled column holds figures."""
    if chars and sum(1 for c in chars if not c.get("upright", True)) > len(chars) / 2:
        return None  # a table on a rotated page: pdfplumber's grid is transposed
    grid, columns = _grid(table, chars)
    if not grid or len(columns) < 2:
        return None
    width = len(columns)

    # Leading rows holding one value across the table: a title, kept as plain text.
    titles: list[str] = []
    start = 0
    while start < len(grid) and (_single_value(grid[start]) is not None or not any(s.text for s in grid[start])):
        titles.append(_single_value(grid[start]) or "")
        start += 1

    # Header: the rows above the first row with figures (years count as labels), when there are
    # at most MAX_HEADER_ROWS of them; else (a table of words) the first row. A first row of
    # figures means no header names, unless the previous page's table had as many columns.
    first_figures = next((i for i in range(start, len(grid)) if _has_figures(grid[i])), None)
    if first_figures is None or first_figures - start > MAX_HEADER_ROWS:
        body_start = min(start + 1, len(grid))
    else:
        body_start = first_figures
    header_rows = grid[start:body_start]
    if header_rows:
        header = _header(table, header_rows, chars, columns)
    else:
        header = list((carried or {}).get(width, [""] * width))

    body = [(i, row) for i, row in enumerate(grid) if i >= body_start]
    labels = _left_labels(table, body, left or [])
    rows: list[list[str]] = []
    out: list[str] = [line for line in titles if line]
    if any(header):
        out.append(header_line(header))
    for i, row in body:
        if labels:
            text, label_chars = labels.get(i, ("", []))
            row = [_Slot(text, True, False, (i, -1), label_chars), *row]
        if not any(s.own and s.text for s in row):
            continue  # nothing starts here: a spacer, or the lower part of taller cells
        single = _single_value(row)
        if single is not None:
            out.append(single)  # a section label or a note spanning the table, in place
            continue
        names = _row_names(row, ["", *header] if labels else header)
        for values in _split_stacked(row):
            rows.append(values)
            out.extend(_wrap(line) for line in table_row_lines(names, [values]))
    if sum(1 for r in rows if sum(1 for v in r if v) >= 2) < 2:
        return None
    return "\n".join(line for line in out if line.strip()), header, bool(labels)


def _wrap(line: str) -> str:
    """A row line longer than MAX_ROW_CHARS as several lines, each starting with the row's first
    cell (its label), so a chunk boundary inside a wide row never parts a cell from its row."""
    if len(line) <= MAX_ROW_CHARS:
        return line
    label, *cells = line.split(" | ")
    parts: list[str] = []
    current = label
    for cell in cells:
        if current != label and len(current) + 3 + len(cell) > MAX_ROW_CHARS:
            parts.append(current)
            current = label
        current += " | " + cell
    parts.append(current)
    return "\n".join(parts)


def _left_labels(
    table: Any, body: list[tuple[int, list[_Slot]]], left: list[dict[str, Any]]
) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """{row: (label, its characters)} from the text left of the table, when its first ruled
    column holds figures (the row labels sit outside the ruling) and most body rows have such
    text; else {}."""
    if not left or not body:
        return {}
    firsts = [row[0].text for _, row in body if row[0].own and row[0].text]
    if not firsts or sum(_figure(text) for text in firsts) < 0.5 * len(firsts):
        return {}
    labels: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    for i, _ in body:
        top, bottom = table.rows[i].bbox[1], table.rows[i].bbox[3]
        mine = [c for c in left if top <= (c["top"] + c["bottom"]) / 2 < bottom]
        text = _cell_text(mine)
        if text:
            labels[i] = (text, mine)
    return labels if len(labels) >= 0.6 * len(body) else {}


def _grid(table: Any, chars: list[dict[str, Any]]) -> tuple[list[list[_Slot]], list[float]]:
    """Every grid slot with its owning cell's text; slots covered by a merged cell point to it."""
    rows = table.rows
    columns = sorted({cell[0] for cell in table.cells})
    if not rows or not columns:
        return [], columns
    texts: dict[tuple[int, int], str] = {}
    cell_chars: dict[tuple[int, int], list[dict[str, Any]]] = {}
    by_y = sorted(chars, key=lambda c: (c["top"] + c["bottom"]) / 2)
    ys = [(c["top"] + c["bottom"]) / 2 for c in by_y]
    for i, row in enumerate(rows):
        row_bbox = row.bbox
        row_chars = [c for c in by_y[bisect_left(ys, row_bbox[1]) : bisect_left(ys, row_bbox[3])] if _inside(c, row_bbox)]
        for j, cell in enumerate(row.cells):
            if cell is not None:
                cell_chars[(i, j)] = [c for c in row_chars if _inside(c, cell)]
                texts[(i, j)] = _cell_text(cell_chars[(i, j)])
    grid: list[list[_Slot]] = []
    for i, row in enumerate(rows):
        slots: list[_Slot] = []
        top = row.bbox[1]
        for j, cell in enumerate(row.cells):
            if cell is not None:
                slots.append(_Slot(texts[(i, j)], True, False, (i, j), cell_chars[(i, j)]))
                continue
            owner = None
            from_left = False
            for k in range(j - 1, -1, -1):  # a cell in this row reaching over this column
                left = row.cells[k]
                if left is not None:
                    if left[2] > columns[j] + 1:
                        owner, from_left = (i, k), True
                    break
            if owner is None:
                for k in range(i - 1, -1, -1):  # a cell above reaching down into this row
                    above = rows[k].cells[j] if j < len(rows[k].cells) else None
                    if above is not None:
                        if above[3] > top + 1:
                            owner = (k, j)
                        break
            text = texts.get(owner, "") if owner is not None else ""
            slots.append(_Slot(text, False, from_left, owner or (i, j)))
        grid.append(slots)
    return grid, columns


def _cell_text(chars: list[dict[str, Any]]) -> str:
    if not chars:
        return ""
    from pdfplumber.utils import extract_text, extract_words

    rotated = [c for c in chars if not c.get("upright", True)]
    if len(rotated) > len(chars) / 2:
        # Vertical text (rotated column headings): words read along y, lines follow across x.
        up = sum(1 for c in rotated if c["matrix"][1] > 0) >= len(rotated) / 2
        char_dir, line_dir = ("btt", "ltr") if up else ("ttb", "rtl")
        words = extract_words(chars, line_dir_rotated=line_dir, char_dir_rotated=char_dir)
        words.sort(key=lambda w: w["x0"] if up else -w["x1"])
        lines: list[list[dict[str, Any]]] = []
        for word in words:
            edge = word["x0"] if up else word["x1"]
            if lines and abs((lines[-1][0]["x0"] if up else lines[-1][0]["x1"]) - edge) <= 3:
                lines[-1].append(word)
            else:
                lines.append([word])
        text = "\n".join(" ".join(w["text"] for w in sorted(line, key=lambda w: -w["bottom"] if up else w["top"])) for line in lines)
    else:
        text = extract_text(chars, x_tolerance_ratio=X_TOLERANCE_RATIO)
    lines = (_unspace(" ".join(_LEADER.sub(" ", line).split())).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _unspace(text: str) -> str:
    """'0 3 / 2 5 / 2 0 16' (a field printed one character at a time) -> '03/25/2016'."""
    tokens = text.split(" ")
    if len(tokens) >= 4 and sum(len(t) == 1 for t in tokens) >= 0.6 * len(tokens) and not any(ch.isalpha() for ch in text):
        return "".join(tokens)
    return text


def _figure(text: str) -> bool:
    """A number-like cell value: mostly digits among its letters and digits."""
    compact = "".join(ch for ch in text if ch.isalnum())
    digits = sum(ch.isdigit() for ch in compact)
    return bool(compact) and digits / len(compact) >= 0.6


def _has_figures(row: list[_Slot]) -> bool:
    """Whether a row holds figures outside its first column (its label); years are labels."""
    for slot in row[1:]:
        if not slot.own or not slot.text:
            continue
        text = " ".join(slot.text.split())
        if _figure(text) and not _YEAR.match(text):
            return True
    return False


def _single_value(row: list[_Slot]) -> str | None:
    """The text of a row that holds exactly one non-empty cell of its own and nothing else."""
    owners = {s.owner for s in row if s.text}
    if len(owners) != 1 or not any(s.own and s.text for s in row):
        return None
    return " ".join(next(s.text for s in row if s.text).split())


def _row_names(row: list[_Slot], header: list[str]) -> list[str]:
    """The header as this row's cells see it: a cell merged over several grid columns whose own
    column has no name takes the one name found over the columns it spans (header and body
    ruled on different grids)."""
    names = list(header)
    for j, slot in enumerate(row):
        if not slot.own or names[j]:
            continue
        span = [k for k in range(j + 1, len(row)) if row[k].owner == slot.owner and row[k].from_left]
        found = {header[k] for k in span if header[k]}
        if len(found) == 1:
            names[j] = found.pop()
    return names


def _split_stacked(row: list[_Slot]) -> list[list[str]]:
    """A row's values. Rows that pdfplumber stacked into one cell row (no rule between them) are
    split again by position: the text lines of the cell with the most lines of figures give the
    rows' heights, every other cell's lines go to the nearest, and a one-line cell repeats over
    them (a label centred on its group). Covered slots repeat a vertically merged cell's text (a
    row label spanning rows) and stay empty for a horizontally merged one."""
    values = ["" if (s.from_left and not s.own) else " ".join(s.text.split()) for s in row]
    lines = [_lines_of(s.chars) if s.own else [] for s in row]
    texts = [[_line_text(line) for line in cell] for cell in lines]
    figures = [cell for cell in texts if len(cell) > 1 and all(_figure(t) for t in cell)]
    if not figures:
        return [values]
    guide = max(range(len(row)), key=lambda j: len(texts[j]) if texts[j] in figures else 0)
    bands = [line[0]["top"] for line in lines[guide]]
    stacked: list[list[str]] = [list(values) for _ in bands]
    for j, cell in enumerate(lines):
        if len(cell) <= 1:
            continue  # one line (or none): the same value on every row
        parts: list[list[str]] = [[] for _ in bands]
        for line, text in zip(cell, texts[j]):
            nearest = min(range(len(bands)), key=lambda k: abs(bands[k] - line[0]["top"]))
            parts[nearest].append(text)
        for k, part in enumerate(parts):
            stacked[k][j] = " ".join(part)
    return stacked


def _line_text(line: list[dict[str, Any]]) -> str:
    from pdfplumber.utils import extract_text

    text = _unspace(" ".join(_LEADER.sub(" ", extract_text(line, x_tolerance_ratio=X_TOLERANCE_RATIO)).split())).strip()
    return text.rstrip(" .") if any(ch.isalpha() for ch in text) else text  # a leader's last dots


def _header(table: Any, header_rows: list[list[_Slot]], chars: list[dict[str, Any]], columns: list[float]) -> list[str]:
    """One name per column, joining the header rows top-down; a heading merged over several
    columns repeats over each, unless its own words sit over distinct columns (several labels in
    one unruled cell), which then go each to its column."""
    width = len(columns)
    names: list[list[str]] = [[] for _ in range(width)]
    spans: dict[tuple[int, int], list[int]] = {}  # owning cell -> the columns it covers, row-major
    for slots in header_rows:
        for j, slot in enumerate(slots):
            if slot.text and j not in spans.setdefault(slot.owner, []):
                spans[slot.owner].append(j)
    for owner, span in spans.items():
        oi, oj = owner
        text = next(s.text for slots in header_rows for s in slots if s.owner == owner)
        if len(span) == 1:
            _add(names[span[0]], text)
            continue
        cell = table.rows[oi].cells[oj]
        cell_chars = [c for c in chars if _inside(c, cell)] if cell is not None else []
        lines = _lines_of(cell_chars)
        if not lines:  # rotated text: no per-column split
            for column in span:
                _add(names[column], text)
            continue
        for line in lines:
            phrases = _phrases(line)
            hit: dict[int, list[str]] = {}
            for phrase, centre in phrases:
                hit.setdefault(_column_of(centre, columns), []).append(phrase)
            if len(phrases) > 1 and len(hit) == len(phrases) and set(hit) <= set(span):
                for column, texts in hit.items():
                    _add(names[column], " ".join(texts))
            else:
                label = " ".join(phrase for phrase, _ in phrases)
                for column in span:
                    _add(names[column], label)
    return [" ".join(parts) for parts in names]


def _add(parts: list[str], text: str) -> None:
    text = " ".join(text.split())
    if text and (not parts or parts[-1] != text):
        parts.append(text)


def _lines_of(chars: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Upright characters grouped into text lines, top to bottom."""
    upright = sorted((c for c in chars if c.get("upright", True)), key=lambda c: (round(c["top"]), c["x0"]))
    lines: list[list[dict[str, Any]]] = []
    for char in upright:
        if lines and abs(lines[-1][0]["top"] - char["top"]) <= max(2.0, 0.3 * char.get("size", 10)):
            lines[-1].append(char)
        else:
            lines.append([char])
    return [sorted(line, key=lambda c: c["x0"]) for line in lines]


def _phrases(line: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """A line's words grouped into phrases split at gaps wider than half the font size:
    (text, horizontal centre)."""
    phrases: list[tuple[str, float]] = []
    current: list[dict[str, Any]] = []
    last_x1 = None
    for char in line:
        if not char["text"].strip():
            continue
        gap = char["x0"] - last_x1 if last_x1 is not None else 0.0
        if current and gap > 0.5 * char.get("size", 10):
            phrases.append(_phrase(current))
            current = []
        current.append(char)
        last_x1 = char["x1"]
    if current:
        phrases.append(_phrase(current))
    return phrases


def _phrase(chars: list[dict[str, Any]]) -> tuple[str, float]:
    text = ""
    for previous, char in zip([None, *chars], chars):
        if previous is not None and char["x0"] - previous["x1"] > 0.15 * char.get("size", 10):
            text += " "
        text += char["text"]
    return text, (chars[0]["x0"] + chars[-1]["x1"]) / 2


def _column_of(x: float, columns: list[float]) -> int:
    """The grid column whose left edge is the last one at or before x."""
    for j in range(len(columns) - 1, -1, -1):
        if x >= columns[j]:
            return j
    return 0
