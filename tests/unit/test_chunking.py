"""RecursiveChunker: exact offsets, size and overlap limits, full coverage, pages kept apart.

hypothesis is not installed, so the properties are checked over a seeded random generator.
"""

from __future__ import annotations

import random

import pytest

from rag_core.chunking import Chunk, RecursiveChunker
from rag_core.location import Location
from rag_core.parsing import ParsedSegment


def page(number: int, text: str) -> ParsedSegment:
    return ParsedSegment(text, Location("page", number))


WORDS = ["alpha", "beta", "gamma", "delta", "retrieval", "vector", "index", "a", "of", "the"]
UNICODE_WORDS = ["café", "naïve", "日本語", "テキスト", "🙂", "🚀🚀", "Ωμέγα", "e\u0301", "ß", "\u00a0", "中文字符"]


# -- text generators --------------------------------------------------------------------------
def paragraphs(rng: random.Random, n: int = 6) -> str:
    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))).capitalize() + "."

    return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(1, 6))) for _ in range(n))


def no_separators(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(100, 2500)))


def unicode_text(rng: random.Random) -> str:
    pieces = [rng.choice(UNICODE_WORDS + WORDS) + rng.choice([" ", " ", "\n", "\t", ". ", "\n\n", ""]) for _ in range(rng.randint(20, 400))]
    return "".join(pieces)


def short_lines(rng: random.Random) -> str:
    return "\n".join(rng.choice(["", " ", "-", "x", "ok", "1.", rng.choice(WORDS)]) for _ in range(rng.randint(50, 600)))


def whitespace_soup(rng: random.Random) -> str:
    tokens = [" ", "  ", "\n", "\n\n", "\t", "\u00a0", ". ", "word ", "x" * 50, "日", "🙂", "é"]
    return "".join(rng.choice(tokens) for _ in range(rng.randint(0, 400)))


GENERATORS = [paragraphs, no_separators, unicode_text, short_lines, whitespace_soup]


def random_cases(seed: int, count: int):
    """(text, chunker) pairs over all generators and a spread of size/overlap settings."""
    rng = random.Random(seed)
    for i in range(count):
        text = GENERATORS[i % len(GENERATORS)](rng)
        size = rng.choice([32, 33, 50, 64, 100, 128, 257, 512])
        overlap = rng.choice([0, 1, size // 8, size // 4, size // 2, size - 1])
        yield text, RecursiveChunker(size, overlap)


# -- invariants -------------------------------------------------------------------------------
def assert_chunk_invariants(page_text: str, chunks: list[Chunk], chunker: RecursiveChunker) -> None:
    covered = [False] * len(page_text)
    for chunk in chunks:
        assert page_text[chunk.char_start : chunk.char_end] == chunk.text
        assert 0 < len(chunk.text) <= chunker.chunk_size
        assert chunk.text == chunk.text.strip()
        for i in range(chunk.char_start, chunk.char_end):
            covered[i] = True
    uncovered = [i for i, char in enumerate(page_text) if not char.isspace() and not covered[i]]
    assert not uncovered, f"characters at {uncovered[:10]} are in no chunk"
    for previous, following in zip(chunks, chunks[1:]):
        assert following.char_start >= previous.char_start
        assert previous.char_end - following.char_start <= chunker.chunk_overlap


def chunks_of(text: str, chunker: RecursiveChunker) -> list[Chunk]:
    return chunker.chunk_segments([page(1, text)])


# -- properties over generated texts ---------------------------------------------------------
@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_invariants_hold_for_each_kind_of_text(generator) -> None:
    rng = random.Random(f"chunking-{generator.__name__}")
    for size, overlap in [(32, 0), (64, 16), (128, 127), (512, 64)]:
        chunker = RecursiveChunker(size, overlap)
        for _ in range(15):
            text = generator(rng)
            assert_chunk_invariants(text, chunks_of(text, chunker), chunker)


def test_invariants_hold_over_many_random_cases() -> None:
    for text, chunker in random_cases(seed=20240611, count=400):
        assert_chunk_invariants(text, chunks_of(text, chunker), chunker)


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", " \t\n \u00a0 \r\n"], ids=repr)
def test_empty_or_whitespace_text_gives_no_chunks(text: str) -> None:
    assert RecursiveChunker(32, 8).split(text) == []
    assert chunks_of(text, RecursiveChunker(32, 8)) == []


def test_output_is_deterministic() -> None:
    texts = [text for text, _ in random_cases(seed=7, count=20)]
    first = [chunks_of(t, RecursiveChunker(100, 20)) for t in texts]
    again = [chunks_of(t, RecursiveChunker(100, 20)) for t in texts]
    assert first == again


# -- specific behaviour ----------------------------------------------------------------------
def test_short_text_is_one_stripped_chunk() -> None:
    text = "  \n Hello world. \n"
    assert chunks_of(text, RecursiveChunker(512, 64)) == [Chunk(0, 4, 16, "Hello world.", Location("page", 1))]


def test_paragraph_boundaries_are_preferred() -> None:
    first, second = "a" * 60 + " first paragraph.", "b" * 60 + " second paragraph."
    text = f"{first}\n\n{second}"
    assert [c.text for c in chunks_of(text, RecursiveChunker(100, 10))] == [first, second]


def test_text_without_separators_is_cut_hard_at_chunk_size() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    chunks = chunks_of(text, RecursiveChunker(128, 32))
    assert [(c.char_start, c.char_end) for c in chunks] == [(s, min(s + 128, 1000)) for s in range(0, 1000, 128)]


def test_separators_without_hard_cut_still_respect_chunk_size() -> None:
    chunker = RecursiveChunker(40, 0, separators=["\n"])
    text = "y" * 300 + "\nshort line"
    assert_chunk_invariants(text, chunks_of(text, chunker), chunker)


def test_neighbouring_chunks_share_text_when_overlap_is_allowed() -> None:
    text = " ".join(f"w{i:03d}" for i in range(300))  # 5-character pieces at the word level
    with_overlap = chunks_of(text, RecursiveChunker(64, 16))
    overlaps = [a.char_end - b.char_start for a, b in zip(with_overlap, with_overlap[1:])]
    assert all(0 < o <= 16 for o in overlaps)

    without = chunks_of(text, RecursiveChunker(64, 0))
    assert all(a.char_end <= b.char_start for a, b in zip(without, without[1:]))


def test_unicode_offsets_are_code_point_offsets() -> None:
    text = "日本語のテキスト。" * 20 + "\n\n" + "🙂 emoji line " * 10
    chunker = RecursiveChunker(50, 10)
    chunks = chunks_of(text, chunker)
    assert len(chunks) > 2
    assert_chunk_invariants(text, chunks, chunker)
    assert any("🙂" in c.text for c in chunks)


@pytest.mark.parametrize("size, overlap", [(100, 100), (100, 101), (100, -1), (0, 0)])
def test_invalid_size_or_overlap_is_rejected(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        RecursiveChunker(size, overlap)


# -- pages ------------------------------------------------------------------------------------
def test_chunks_never_cross_pages_and_indices_run_across_the_file() -> None:
    rng = random.Random(3)
    pages = [
        page(1, paragraphs(rng, 3)),
        page(2, "   \n  "),  # a blank page yields no chunk but keeps its number
        page(3, "short page"),
        page(4, unicode_text(rng)),
        page(5, no_separators(rng)),
    ]
    chunker = RecursiveChunker(80, 20)
    chunks = chunker.chunk_segments(pages)

    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)
    assert {c.page for c in chunks} == {1, 3, 4, 5}
    by_number = {page.location.page: page.text for page in pages}
    for number, text in by_number.items():
        on_page = [c for c in chunks if c.page == number]
        assert_chunk_invariants(text, on_page, chunker)  # offsets are relative to the page's own text
    assert [c.text for c in chunks if c.page == 3] == ["short page"]


def test_chunk_pages_matches_split_page_by_page() -> None:
    pages = [page(7, "one two three " * 20), page(9, "four five six " * 20)]
    chunker = RecursiveChunker(64, 8)
    chunks = chunker.chunk_segments(pages)
    expected = [(p.location.page, s, e) for p in pages for s, e in chunker.split(p.text)]
    assert [(c.page, c.char_start, c.char_end) for c in chunks] == expected


# -- known defect -----------------------------------------------------------------------------
def test_every_chunk_adds_text_beyond_the_previous_one() -> None:
    # Default settings; a signature line followed by a long run of spaces (fixed-width layout).
    text = "A" * 440 + " closing words.\n" + "Signed, Bob\n" + " " * 100 + "\n" + "B" * 500
    chunks = chunks_of(text, RecursiveChunker(512, 64))
    # Actual: ["AAA... closing words.\nSigned, Bob", "Signed, Bob", "BBB..."]
    for previous, following in zip(chunks, chunks[1:]):
        assert following.char_end > previous.char_end, f"{following.text!r} repeats the end of the previous chunk"
