"""Bytes of a text file (plain text, Markdown, CSV, HTML) to str, with the encoding detected when
the file does not declare one; text that decodes to garbage is refused, never indexed."""

from __future__ import annotations

import codecs
import unicodedata

from rag_core.parsing.base import DocumentParseError

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Among detections that fit the bytes equally well, the HTML standard's default for unlabelled
# legacy Western pages comes first (charset-normalizer rates windows-1250 as good a fit for French
# text, which turns "très" into "trčs").
_PREFERRED = ("utf_8", "ascii", "cp1252", "latin_1")
_MAX_GARBAGE = 0.02


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """(text, encoding used). Order: byte-order mark, the file's own declaration, UTF-8, detection."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _checked(data.decode(encoding, errors="replace"), encoding)
    if declared:
        try:
            return _checked(data.decode(declared), codecs.lookup(declared).name)
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong declaration is common on the web; detect instead
    try:
        return _checked(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    # UTF-8 text with a few stray bytes (a truncated write, one pasted character) keeps its real
    # characters; guessing another encoding would garble all of them instead of a few.
    lenient = data.decode("utf-8", errors="replace")
    if any(ord(char) > 127 and char != "\ufffd" for char in lenient) and lenient.count("\ufffd") <= max(1, len(lenient) // 200):
        return _checked(lenient, "utf-8")
    import charset_normalizer

    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        raise DocumentParseError("text in an unknown encoding (not UTF-8, and no other encoding fits the bytes)")
    least_chaos = min(match.chaos for match in matches)
    best = max(
        (m for m in matches if m.chaos == least_chaos),
        key=lambda m: (m.coherence, m.encoding in _PREFERRED, -_PREFERRED.index(m.encoding) if m.encoding in _PREFERRED else 0),
    )
    return _checked(str(best), best.encoding)


def garbage_ratio(text: str) -> float:
    """Share of characters that no reader wants: replacement characters, control characters other
    than whitespace, private-use and unassigned code points."""
    if not text:
        return 0.0
    bad = 0
    for char in text:
        if char in "\t\n\r\f\v":
            continue
        category = unicodedata.category(char)
        if char == "\ufffd" or category in ("Cc", "Co", "Cn", "Cs"):
            bad += 1
    return bad / len(text)


def _checked(text: str, encoding: str) -> tuple[str, str]:
    text = text.replace("\x00", "")  # stray NULs (some exporters pad with them) break stores, nothing else
    ratio = garbage_ratio(text)
    if ratio > _MAX_GARBAGE:
        raise DocumentParseError(
            f"text does not decode cleanly ({ratio:.0%} unreadable characters as {encoding}): binary or unknown encoding"
        )
    return text, encoding
