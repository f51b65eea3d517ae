"""Contextual chunk text: what a chunk is embedded and BM25-indexed by, as opposed to what is
stored and returned. A chunk taken out of its document loses what the document is about ("the
patients in this cohort..."); its document's title and its section's heading in front of it give
that back to both searches. The stored text, citations and answers are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rag_core.location import Location

# The chunk-metadata key of the document's title (prefixed, like the location keys, so that it
# never collides with a sidecar's own "title").
DOCUMENT_TITLE_KEY = "doc_title"

# How far into a chunk its title or heading counts as already present (the first chunk of a text
# file begins with its title line; a Markdown section's first chunk with its heading line).
_ALREADY_AT_START = 300


def indexed_text(text: str, *, title: str | None = None, heading: str | None = None) -> str:
    """`text` with its document's title and its section's heading path in front. What the chunk
    already says at its start is left out (a text file's title line, a section's own heading), and
    so is a title that the heading path already begins with."""
    head = text[:_ALREADY_AT_START].casefold()
    title = " ".join((title or "").split())
    path = [" ".join(part.split()) for part in (heading or "").split(" > ") if part.strip()]
    while path and path[-1].casefold() in head:
        path.pop()
    if path and title and path[0].casefold() == title.casefold():
        title = ""
    if title and title.casefold() in head:
        title = ""
    context = [part for part in (title, " > ".join(path)) if part]
    return "\n".join([*context, text]) if context else text


def version_indexed_texts(texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]], *, contextual: bool) -> list[str]:
    """A version's stored chunks as its BM25 reads them: the text they were embedded by, which its
    chunking record's `contextual` says."""
    if not contextual:
        return list(texts)
    return [chunk_indexed_text(text, metadata) for text, metadata in zip(texts, metadatas)]


def chunk_indexed_text(text: str, metadata: Mapping[str, Any]) -> str:
    """A stored chunk's indexed text, from its metadata (Chroma's or the Parquet row's)."""
    title = metadata.get(DOCUMENT_TITLE_KEY)
    return indexed_text(text, title=title if isinstance(title, str) else None, heading=Location.from_metadata(dict(metadata)).heading)
