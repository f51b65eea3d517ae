"""EPUB with EbookLib: the chapters in reading (spine) order, each read as HTML; a chapter's
position in the spine is its `page`."""

from __future__ import annotations

import io
import logging
import warnings

from rag_core.parsing.base import DocumentParseError, ParsedDocument, document_title
from rag_core.parsing.encoding import decode_text
from rag_core.parsing.html import read_html

LIBRARY = "ebooklib"
REVISION = 2


def parse(data: bytes) -> ParsedDocument:
    import zipfile

    from ebooklib import ITEM_DOCUMENT, epub

    logging.getLogger("ebooklib").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
    except (zipfile.BadZipFile, KeyError, epub.EpubException) as exc:
        raise DocumentParseError(f"corrupt or unreadable .epub file: {exc}") from exc
    except Exception as exc:
        raise DocumentParseError(f"corrupt or unreadable .epub file: {type(exc).__name__}: {exc}") from exc
    title = None
    titles = book.get_metadata("DC", "title")
    if titles:
        title = str(titles[0][0]).strip() or None
    segments = []
    chapter = 0
    for item_id, _ in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ITEM_DOCUMENT:
            continue
        chapter += 1
        markup, _ = decode_text(item.get_content())
        segments.extend(read_html(markup, page=chapter, root_heading=title).segments)
    return ParsedDocument(segments, title=document_title(title))
