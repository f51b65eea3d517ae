"""rag_core.ocr_cache with the real Tesseract behind a wrapper that counts its page reads."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

from ingest_jobs.pipeline import ocr_factory
from rag_core.ocr import OcrUnavailable, TesseractOcr, image_frames
from rag_core.ocr_cache import CachingOcr, OcrCache
from rag_core.settings import OCRSettings
from tests.conftest import SHARED_DATA

IMAGE = SHARED_DATA / "docs" / "ocrmypdf__typewriter.png"


def counting_tesseract(tmp_path: Path) -> tuple[str, Path]:
    """The real tesseract, behind a script that logs every page read (not the probes)."""
    real = shutil.which("tesseract")
    assert real, "tesseract is not installed (scripts/ensure_ocr.sh)"
    calls = tmp_path / "calls.log"
    script = tmp_path / "tesseract"
    script.write_text(f'#!/bin/sh\ncase "$1" in --version|--list-langs) ;; *) echo "$*" >> {calls};; esac\nexec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), calls


def reads(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


@pytest.fixture
def page() -> Image.Image:
    return image_frames(IMAGE.read_bytes())[0]


def test_a_page_image_is_read_once_and_the_cached_text_is_the_same(tmp_path: Path, page: Image.Image) -> None:
    cmd, calls = counting_tesseract(tmp_path)
    cache = OcrCache(tmp_path / "cache")
    first = CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(page)
    after_first = reads(calls)
    assert after_first >= 1 and len(first.text.split()) > 20

    # Another engine object (another parse task), same folder: no Tesseract run, the same result.
    again = CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache)
    second = again.read(page.copy())
    assert reads(calls) == after_first
    assert second == first and again.hits == 1 and again.misses == 0


def test_another_signature_or_another_image_is_read_again(tmp_path: Path, page: Image.Image) -> None:
    cmd, calls = counting_tesseract(tmp_path)
    cache = OcrCache(tmp_path / "cache")
    CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(page)
    n = reads(calls)
    other_languages = CachingOcr(TesseractOcr(languages=("eng", "fra"), tesseract_cmd=cmd), cache)
    other_languages.read(page)
    assert reads(calls) > n and other_languages.misses == 1
    n = reads(calls)
    other_dpi = CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd, dpi=200), cache)
    other_dpi.read(page)
    assert reads(calls) > n
    n = reads(calls)
    cropped = page.crop((0, 0, page.width, page.height // 2))
    CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(cropped)
    assert reads(calls) > n


def test_no_engine_means_no_answer_from_the_cache(tmp_path: Path, page: Image.Image) -> None:
    cache = OcrCache(tmp_path / "cache")
    CachingOcr(TesseractOcr(languages=("eng",)), cache).read(page)
    assert list((tmp_path / "cache").rglob("*.json"))
    missing = CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd="/nonexistent/tesseract"), cache)
    with pytest.raises(OcrUnavailable):
        missing.read(page)


def test_an_unreadable_entry_is_read_again_and_rewritten(tmp_path: Path, page: Image.Image) -> None:
    cmd, calls = counting_tesseract(tmp_path)
    cache = OcrCache(tmp_path / "cache")
    first = CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(page)
    (entry,) = (tmp_path / "cache").rglob("*.json")
    entry.write_text("{not json")
    n = reads(calls)
    assert CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(page) == first
    assert reads(calls) > n
    n = reads(calls)
    assert CachingOcr(TesseractOcr(languages=("eng",), tesseract_cmd=cmd), cache).read(page) == first
    assert reads(calls) == n  # the entry was rewritten
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_a_cache_folder_that_cannot_be_written_costs_a_read_not_the_page(tmp_path: Path, page: Image.Image) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    result = CachingOcr(TesseractOcr(languages=("eng",)), OcrCache(blocked / "cache")).read(page)
    assert result.text.strip()


def test_the_ingest_uses_the_cache_unless_it_is_turned_off(tmp_path: Path) -> None:
    engine = ocr_factory(OCRSettings(cache_dir=str(tmp_path)))()
    assert isinstance(engine, CachingOcr) and engine.cache.directory == tmp_path
    assert isinstance(ocr_factory(OCRSettings(cache_dir=None))(), TesseractOcr)
    assert OCRSettings().cache_dir == "~/.cache/rag-service/ocr"
