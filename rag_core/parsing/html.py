"""HTML and XHTML with BeautifulSoup (lxml): the visible text in reading order, sections at
headings, tables as rows with their headers, <pre> kept as laid out; scripts, styles, navigation
and hidden elements left out. Also the reader of EPUB chapters."""

from __future__ import annotations

import re
from typing import Any

from rag_core.parsing.base import ParsedDocument, document_title, header_line, table_row_lines
from rag_core.parsing.encoding import decode_text
from rag_core.parsing.sections import SectionBuilder

LIBRARY = "beautifulsoup4"
REVISION = 2

SKIP = {
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "canvas",
    "iframe",
    "object",
    "embed",
    "head",
    "nav",
    "button",
    "select",
    "option",
    "input",
    "textarea",
    "map",
    "math-fallback",
}
HEADINGS = {f"h{level}": level for level in range(1, 7)}
BLOCKS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "blockquote",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "figure",
    "figcaption",
    "address",
    "form",
    "fieldset",
    "details",
    "summary",
    "hr",
    "body",
    "html",
    "center",
    "caption",
    "legend",
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
# Page furniture by the names sites give it: menus, navigation boxes, jump links.
_FURNITURE_CLASS = re.compile(r"(^|[-_])(nav|navbox|navbar|menu|dropdown|sidebar|breadcrumbs?|skip-?link|jump-link)([-_]|$)", re.IGNORECASE)
_FURNITURE_ROLES = {"navigation", "menu", "menubar", "search", "banner", "contentinfo"}


def parse(data: bytes) -> ParsedDocument:
    declared = _META_CHARSET.search(data[:4096])
    text, _ = decode_text(data, declared.group(1).decode("ascii") if declared else None)
    return read_html(text)


def read_html(markup: str, page: int = 1, root_heading: str | None = None) -> ParsedDocument:
    import warnings

    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)  # XHTML (inline XBRL) reads fine as HTML
        soup = BeautifulSoup(markup, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    builder = SectionBuilder(page, root=root_heading)
    reader = _Reader(builder)
    body = soup.body or soup
    mains = soup.find_all("main") or soup.find_all(attrs={"role": "main"})
    if len(mains) == 1 and len(mains[0].get_text(" ", strip=True)) >= 0.3 * len(body.get_text(" ", strip=True)):
        body = mains[0]  # the page's own content, without the site around it
    reader.walk(body)
    reader.flush()
    segments = builder.finish()
    if title and segments and all(s.location.heading is None for s in segments):
        # A page without headings is cited by its title.
        from dataclasses import replace

        segments = [replace(s, location=replace(s.location, heading=title)) for s in segments]
    return ParsedDocument(segments, title=document_title(title))


class _Reader:
    def __init__(self, builder: SectionBuilder):
        self.builder = builder
        self.inline: list[str] = []

    def flush(self) -> None:
        text = "\n".join(" ".join(line.split()) for line in "".join(self.inline).split("\n"))
        text = re.sub(r"\n{2,}", "\n", text).strip()
        if text:
            self.builder.block(text)
        self.inline = []

    def walk(self, node: Any) -> None:
        from bs4 import Comment, NavigableString, Tag

        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                self.inline.append(str(child).replace("\n", " "))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.split(":")[-1].lower() if child.name else ""
            if name in SKIP or _hidden(child):
                continue
            if child.name and child.name.lower() == "ix:header":  # inline-XBRL facts, hidden in browsers
                continue
            if name in HEADINGS:
                self.flush()
                self.builder.heading_block(HEADINGS[name], child.get_text(" ", strip=True))
            elif name == "table":
                self.flush()
                self._table(child)
            elif name == "pre":
                self.flush()
                self.builder.block(child.get_text())
            elif name == "br":
                self.inline.append("\n")
            elif name in BLOCKS:
                self.flush()
                if name == "li":
                    self.inline.append("- ")
                self.walk(child)
                self.flush()
            else:
                self.walk(child)

    def _table(self, table: Any) -> None:
        rows = [row for row in table.find_all("tr") if row.find_parent("table") is table]
        if any(row.find("table") for row in rows) or len(rows) == 0:
            # A layout table (tables inside tables): read its cells as ordinary blocks.
            for row in rows:
                for cell in row.find_all(["td", "th"], recursive=False):
                    self.walk(cell)
                    self.flush()
            return
        grid: list[list[str]] = []
        header_flags: list[bool] = []
        caption = table.find("caption")
        for row in rows:
            cells = row.find_all(["td", "th"], recursive=False)
            values: list[str] = []
            for cell in cells:
                text = " ".join(cell.get_text(" ", strip=True).split())
                span = int(cell.get("colspan", 1)) if str(cell.get("colspan", 1)).isdigit() else 1
                values.extend([text] * max(1, min(span, 50)))
            grid.append(values)
            header_flags.append(bool(cells) and all(cell.name == "th" for cell in cells))
        keep = [(values, flag) for values, flag in zip(grid, header_flags) if any(values)]
        if not keep:
            return
        lines = [" ".join(caption.get_text(" ", strip=True).split())] if caption else []
        header: list[str] = []
        for values, is_header in keep:
            if is_header or (not header and len(keep) > 1 and values is keep[0][0] and not _has_number(values)):
                header = values
                lines.append(header_line(values))
            elif len(values) == 2 and not header:
                lines.append(f"{values[0]}: {values[1]}" if values[0] and values[1] else header_line(values))
            else:
                lines.extend(table_row_lines(header, [values]) if header else [header_line(values)])
        self.builder.block("\n".join(line for line in lines if line))


def _has_number(values: list[str]) -> bool:
    return any(re.fullmatch(r"[-+(]?[\d.,]+%?\)?", value) for value in values if value)


def _hidden(tag: Any) -> bool:
    if tag.get("hidden") is not None or tag.get("aria-hidden") == "true":
        return True
    if tag.get("role") in _FURNITURE_ROLES or any(_FURNITURE_CLASS.search(name) for name in tag.get("class") or ()):
        return True
    style = tag.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))
