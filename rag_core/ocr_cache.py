"""Page texts already read by OCR, kept on the node's disk so a page image is read once.

OCR is most of the parse time of a scanned document (6.3 CPU s a page against 0.08 s for a PDF
page with text; README, OCR). Without a cache every re-parse pays it again: a run killed midway
and started again, a file re-parsed because the PII settings or a parser changed, the same scan
under two names. The key is the page image as it reaches the engine (mode, size and pixels)
together with everything that decides the text read from it (`TesseractOcr.signature`: engine
version, languages, dpi and this project's OCR revision, plus deskew and OSD), so a new Tesseract
or other languages read again, and a cache never answers for an engine that is not there: the
engine is probed first.

One small JSON file per page image, written under a temporary name and renamed, so parse tasks
running at once on one node share the folder safely. Nothing is evicted: an entry is the page's
text (a few kB); delete the folder to reclaim it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from rag_core.ocr import OcrText

log = logging.getLogger(__name__)

# Part of every key: raise it when the stored form changes.
FORMAT = 1


class OcrCache:
    """A folder of OCR results keyed by page image and engine signature."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory).expanduser()

    @staticmethod
    def key(image: Image.Image, signature: str) -> str:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"ocr-cache/{FORMAT}\0{signature}\0{image.mode}\0{image.width}x{image.height}\0".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> OcrText | None:
        try:
            stored = json.loads(self._path(key).read_text(encoding="utf-8"))
            return OcrText(str(stored["text"]), float(stored["confidence"]), int(stored["rotation"]), str(stored["languages"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable entry: read the page again and rewrite it
            log.warning("OCR cache entry unreadable, reading the page again: %s", exc)
            return None

    def put(self, key: str, result: OcrText) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as handle:
                json.dump(asdict(result), handle, ensure_ascii=False)
            os.replace(handle.name, path)
        except OSError as exc:  # a full or read-only disk costs the next run a read, nothing else
            log.warning("OCR cache not written (%s): %s", path.parent, exc)


class CachingOcr:
    """An OCR engine (TesseractOcr's interface) that reads each distinct page image once."""

    def __init__(self, engine: Any, cache: OcrCache):
        self._engine = engine
        self.cache = cache
        self.hits = 0
        self.misses = 0

    @property
    def engine(self) -> str:
        return self._engine.engine

    @property
    def languages(self) -> str:
        return self._engine.languages

    @property
    def signature(self) -> str:
        return self._engine.signature

    def _reading(self) -> str:
        # The signature probes the engine: no engine, no answer from the cache.
        return f"{self._engine.signature} deskew={getattr(self._engine, 'deskew', True)} osd={getattr(self._engine, 'osd', True)}"

    def read(self, image: Image.Image) -> OcrText:
        key = self.cache.key(image, self._reading())
        cached = self.cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        result = self._engine.read(image)
        self.misses += 1
        self.cache.put(key, result)
        return result
