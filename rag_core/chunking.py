"""Recursive character chunking with exact offsets; chunks never cross segments (pages, slides,
sheet tables, sections), so each chunk has one location."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag_core.location import Location
from rag_core.parsing import ParsedSegment


@dataclass(frozen=True)
class Chunk:
    chunk_index: int  # position in the whole file, 0-based
    char_start: int  # offsets into the segment text: segment.text[char_start:char_end] == text
    char_end: int
    text: str
    location: Location = Location()
    ocr_confidence: float | None = None  # set when the text came from OCR

    @property
    def page(self) -> int:
        return self.location.page


class RecursiveChunker:
    """Splits on the first separator that occurs (paragraph, line, sentence, word, character),
    recursing into pieces that are still too long, then packs pieces greedily into chunks of at
    most `chunk_size` characters that share up to `chunk_overlap` characters with the previous one."""

    def __init__(self, chunk_size: int = 512, chunk_overlap: int = 64, separators: Sequence[str] = ("\n\n", "\n", ". ", " ", "")):
        if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
            raise ValueError("need chunk_size >= 1 and 0 <= chunk_overlap < chunk_size")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.separators = list(separators) if "" in separators else [*separators, ""]

    def split(self, text: str) -> list[tuple[int, int]]:
        """(start, end) spans of the chunks of `text`, stripped of surrounding whitespace."""
        pieces = self._pieces(text, 0, len(text), self.separators)
        spans = []
        for start, end in self._pack(pieces):
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            # A whitespace-only piece after the overlap can strip down to the previous chunk's
            # tail; such a chunk adds no text and is dropped.
            if start < end and (not spans or end > spans[-1][1]):
                spans.append((start, end))
        return spans

    def chunk_segments(self, segments: Sequence[ParsedSegment]) -> list[Chunk]:
        chunks: list[Chunk] = []
        for segment in segments:
            for start, end in self.split(segment.text):
                location = segment.location
                rows = segment.rows_between(start, end)
                if rows is not None:
                    location = location.with_rows(*rows)
                chunks.append(Chunk(len(chunks), start, end, segment.text[start:end], location, segment.ocr_confidence))
        return chunks

    def _pieces(self, text: str, start: int, end: int, separators: list[str]) -> list[tuple[int, int]]:
        """Contiguous spans covering text[start:end], each at most chunk_size long."""
        if end - start <= self.chunk_size:
            return [(start, end)] if end > start else []
        for position, separator in enumerate(separators):
            if separator == "":
                return [(s, min(s + self.chunk_size, end)) for s in range(start, end, self.chunk_size)]
            if text.find(separator, start, end) == -1:
                continue
            pieces: list[tuple[int, int]] = []
            cursor = start
            while cursor < end:
                found = text.find(separator, cursor, end)
                piece_end = end if found == -1 else found + len(separator)
                if piece_end - cursor > self.chunk_size:
                    pieces.extend(self._pieces(text, cursor, piece_end, separators[position + 1 :]))
                else:
                    pieces.append((cursor, piece_end))
                cursor = piece_end
            return pieces
        return [(start, end)]

    def _pack(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
        chunks: list[tuple[int, int]] = []
        first = 0
        while first < len(pieces):
            start = pieces[first][0]
            last = first
            while last + 1 < len(pieces) and pieces[last + 1][1] - start <= self.chunk_size:
                last += 1
            end = pieces[last][1]
            chunks.append((start, end))
            if last + 1 == len(pieces):
                break
            # Start the next chunk a few pieces back, as long as the overlap stays within
            # chunk_overlap and the next new piece still fits, so every chunk makes progress.
            following = pieces[last + 1]
            following_len = following[1] - following[0]
            next_first = last + 1
            while (
                next_first - 1 > first
                and end - pieces[next_first - 1][0] <= self.chunk_overlap
                and end - pieces[next_first - 1][0] + following_len <= self.chunk_size
            ):
                next_first -= 1
            first = next_first
        return chunks
