"""rag_core.ocr on the real scans and images in shared/data (read in place), with the real Tesseract.

The slow part, Tesseract reading pages, runs once per module and in parallel (one subprocess per core);
the tests then check what came back. Pages used only for orientation are rendered at 150 dpi to save time.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from rag_core import ocr
from rag_core.ocr import OcrError, OcrText, OcrUnavailable, TesseractOcr, image_frames, render_pdf_page, skew_angle
from tests.conftest import SHARED_DATA

DOCS_DIR = SHARED_DATA / "docs"
HANGUL = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def pdfs(shared_pdf_dir: Path) -> Callable[[str], bytes]:
    return lambda name: (shared_pdf_dir / name).read_bytes()


@pytest.fixture(scope="module")
def docs() -> Callable[[str], bytes]:
    if not (DOCS_DIR / "MANIFEST.tsv").is_file():
        pytest.fail(f"shared test data missing: {DOCS_DIR} (checked out beside the repo as ../shared)")
    return lambda name: (DOCS_DIR / name).read_bytes()


@pytest.fixture(scope="module")
def reader() -> TesseractOcr:
    """The production configuration: eng, fra, nld, kor."""
    return TesseractOcr()


@pytest.fixture(scope="module")
def english() -> TesseractOcr:
    """English only, for tests about orientation and image handling rather than languages (faster)."""
    return TesseractOcr(languages=("eng",))


@pytest.fixture(scope="module")
def cardinal(pdfs) -> list[Image.Image]:
    """ocrmypdf cardinal.pdf: one page upright, then turned 90, 180 and 270 degrees."""
    data = pdfs("ocrmypdf__cardinal.pdf")
    return [render_pdf_page(data, number, dpi=150) for number in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def tiff_frames(docs) -> list[Image.Image]:
    return image_frames(docs("docling__2206.01062.tif"))


@pytest.fixture(scope="module")
def results(reader, english, pdfs, docs, cardinal, tiff_frames) -> dict[str, object]:
    """Every Tesseract run the tests look at, done concurrently."""
    jobs: dict[str, Callable[[], object]] = {
        "francais": lambda: reader.read(render_pdf_page(pdfs("ocrmypdf__francais.pdf"), 1)),
        "typewriter": lambda: reader.read(image_frames(docs("ocrmypdf__typewriter.png"))[0]),
        "korean": lambda: reader.read(image_frames(docs("unstructured__english-and-korean.png"))[0]),
        "cardinal_180": lambda: english.read(cardinal[2]),
        "tiff_frame_1": lambda: english.read(tiff_frames[0]),
        "blank": lambda: reader.read(Image.new("L", (1200, 1600), 255)),
        **{f"orientation_{n}": (lambda page=page: english.orientation(page)) for n, page in enumerate(cardinal, start=1)},
    }
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


# -- the engine and its languages ---------------------------------------------------------------
def test_engine_names_tesseract_and_its_version(reader: TesseractOcr) -> None:
    assert re.fullmatch(r"tesseract \d+\.\d+\.\d+\S*", reader.engine)
    assert reader.languages == "eng+fra+nld+kor"
    assert {"eng", "fra", "nld", "kor", "osd"} <= reader.installed_languages
    assert reader.signature == f"{reader.engine} eng+fra+nld+kor {reader.dpi}dpi ocr-r{ocr.REVISION}"


def test_missing_binary_is_unavailable_with_a_clear_reason() -> None:
    missing = TesseractOcr(tesseract_cmd="/nonexistent/tesseract")

    with pytest.raises(OcrUnavailable) as caught:
        _ = missing.engine
    assert caught.value.reason == "OCR engine not installed"
    with pytest.raises(OcrUnavailable) as caught:
        missing.read(Image.new("L", (100, 100), 255))
    assert caught.value.reason == "OCR engine not installed"


def test_languages_that_are_not_installed_are_left_out_and_none_at_all_is_unavailable() -> None:
    assert TesseractOcr(languages=("eng", "xyz")).languages == "eng"
    assert TesseractOcr(languages="eng+fra").languages == "eng+fra"
    with pytest.raises(OcrUnavailable) as caught:
        _ = TesseractOcr(languages=("xyz", "qqq")).engine
    assert caught.value.reason == "OCR languages not installed: xyz, qqq"


def fake_tesseract(tmp_path: Path, body: str) -> str:
    """A stand-in `tesseract` that answers the probes and runs `body` for a page."""
    script = tmp_path / "tesseract"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  --version) echo 'tesseract 5.3.0'; exit 0;;\n"
        "  --list-langs) echo 'List of available languages in \"/x/\" (1):'; echo eng; exit 0;;\n"
        "esac\n"
        f"{body}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_tesseract_runs_single_threaded_and_reads_the_image_from_stdin(tmp_path: Path) -> None:
    # The page's one word is the OMP_THREAD_LIMIT the subprocess saw; the image arrives as PNG on stdin.
    body = (
        'head -c 8 | od -An -c | grep -q "P   N   G" || exit 3\n'
        "printf 'level\\tpage_num\\tblock_num\\tpar_num\\tline_num\\tword_num\\tleft\\ttop\\twidth\\theight\\tconf\\ttext\\n'\n"
        "printf '5\\t1\\t1\\t1\\t1\\t1\\t0\\t0\\t9\\t9\\t91.5\\tlimit=%s\\n' \"$OMP_THREAD_LIMIT\""
    )
    fake = TesseractOcr(languages=("eng",), tesseract_cmd=fake_tesseract(tmp_path, body), osd=False, deskew=False)

    result = fake.read(Image.new("L", (50, 50), 255))

    assert fake.engine == "tesseract 5.3.0"
    assert result == OcrText(text="limit=1", confidence=91.5, rotation=0, languages="eng")


def test_a_failing_or_hanging_tesseract_is_an_ocr_error(tmp_path: Path) -> None:
    failing = TesseractOcr(languages=("eng",), tesseract_cmd=fake_tesseract(tmp_path, "echo 'Error in pixReadMem' >&2; exit 1"))
    with pytest.raises(OcrError, match="pixReadMem"):
        failing.read(Image.new("L", (50, 50), 255))

    (tmp_path / "slow").mkdir()
    hanging = TesseractOcr(
        languages=("eng",), tesseract_cmd=fake_tesseract(tmp_path / "slow", "exec sleep 10"), timeout_s=0.5, deskew=False
    )
    with pytest.raises(OcrError, match="longer than 0.5 s"):
        hanging.read(Image.new("L", (50, 50), 255))


# -- reading real pages ---------------------------------------------------------------------------
def test_french_scan_is_read_with_its_accents(results) -> None:
    francais = results["francais"]

    assert francais.languages == "eng+fra+nld+kor"
    assert {"portez", "whisky", "intérieure", "côté", "bûches", "capharnaüm", "qualité", "œuvre"} <= words(francais.text)
    assert francais.text.startswith("Portez ce vieux whisky au juge\nblond qui fume sur son")  # lines kept


def test_dutch_typewriter_text_is_read(results) -> None:
    assert {"linzensoep", "waterman", "linzen", "kruidnagel", "kokend", "soep"} <= words(results["typewriter"].text)


def test_korean_and_english_on_one_page_are_both_read(results) -> None:
    text = results["korean"].text

    assert len(HANGUL.findall(text)) >= 60
    assert "안녕하세요" in text
    assert {"rules", "instructions", "template", "haruto"} <= words(text)


def test_confidence_is_a_mean_word_score_in_range(results) -> None:
    read = [result for name, result in results.items() if isinstance(result, OcrText) and name != "blank"]

    assert all(0.0 < result.confidence <= 100.0 for result in read)
    assert all(result.confidence > 85 for result in read)  # clean scans, once upright and large enough


def test_blank_page_reads_as_nothing_without_error(results) -> None:
    assert results["blank"] == OcrText(text="", confidence=0.0, rotation=0, languages="eng+fra+nld+kor")


def test_paragraphs_are_separated_by_a_blank_line(results) -> None:
    text = results["korean"].text

    assert "\n\n" in text
    assert "\n\n\n" not in text
    assert not text.startswith(("\n", " ")) and not text.endswith(("\n", " "))


# -- orientation ---------------------------------------------------------------------------------
def test_osd_detects_each_turned_page_of_cardinal(results) -> None:
    # Degrees clockwise that make the page upright.
    assert [results[f"orientation_{n}"] for n in (1, 2, 3, 4)] == [0, 270, 180, 90]


def test_upside_down_page_is_turned_and_read(results) -> None:
    upside_down = results["cardinal_180"]

    assert upside_down.rotation == 180
    assert upside_down.confidence > 85
    assert {"linnsequencer", "sequence", "recorder", "polyphonic"} <= words(upside_down.text)


def test_too_little_text_for_osd_means_no_rotation(english: TesseractOcr) -> None:
    assert english.orientation(Image.new("L", (400, 300), 255)) == 0


# -- skew -------------------------------------------------------------------------------------------
def test_skew_is_measured_on_the_skewed_scan_and_not_on_the_straight_one(pdfs) -> None:
    skewed = render_pdf_page(pdfs("ocrmypdf__skew.pdf"), 1, dpi=100)
    straight = render_pdf_page(pdfs("ocrmypdf__linn.pdf"), 1, dpi=100)

    assert 1.4 <= skew_angle(skewed) <= 2.2
    assert abs(skew_angle(straight)) < ocr.MIN_SKEW
    assert ocr.deskew(straight) is straight


# -- images -----------------------------------------------------------------------------------------
def test_every_tiff_frame_is_a_page(tiff_frames, results) -> None:
    assert len(tiff_frames) == 2
    assert all(frame.size == (612, 792) for frame in tiff_frames)
    # 612x792 px with "1 dpi" in the file: Tesseract is given no resolution, estimates about 115 and the
    # page is enlarged before the real read (at its own size it reads at about 46).
    assert {"doclaynet", "human", "annotated", "dataset", "layout"} <= words(results["tiff_frame_1"].text)


@pytest.mark.parametrize(
    ("name", "size", "mode"),
    [
        ("ocrmypdf__typewriter.png", (4000, 2864), "P"),
        ("unstructured__double-column-A.jpg", (1248, 1664), "RGB"),
        ("unstructured__english-and-korean.png", (650, 814), "RGBA"),
    ],
)
def test_png_and_jpeg_are_one_frame(docs, name: str, size: tuple[int, int], mode: str) -> None:
    frames = image_frames(docs(name))

    assert [(frame.size, frame.mode) for frame in frames] == [(size, mode)]


def test_undecodable_image_bytes_are_a_value_error(docs) -> None:
    png = docs("ocrmypdf__crom.png")
    for data in (b"", b"this is not an image", png[: len(png) // 2], b"\x89PNG\r\n\x1a\n" + b"\x00" * 64):
        with pytest.raises(ValueError):
            image_frames(data)


def test_transparent_image_is_read_on_white() -> None:
    page, dpi = ocr._prepare(Image.new("RGBA", (20, 10), (0, 0, 0, 0)))

    assert page.mode == "L" and page.getextrema() == (255, 255)
    assert dpi is None


# -- PDF rendering ------------------------------------------------------------------------------------
def test_pdf_page_renders_at_the_asked_resolution(pdfs) -> None:
    page = render_pdf_page(pdfs("ocrmypdf__francais.pdf"), 1, dpi=200)  # a 3 x 3 inch page

    assert page.mode == "L"
    assert page.size == (600, 600)
    assert page.info["dpi"] == (200, 200)


def test_huge_pdf_page_is_rendered_at_a_lower_resolution(pdfs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocr, "MAX_PIXELS", 1_000_000)
    page = render_pdf_page(pdfs("ocrmypdf__multipage.pdf"), 2)  # 30 x 30 inches

    assert page.width * page.height <= 1_000_000
    assert page.info["dpi"][0] < 300


def test_missing_page_or_wrong_password_is_a_value_error(pdfs) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        render_pdf_page(pdfs("ocrmypdf__francais.pdf"), 2)
    encrypted = pdfs("pdfminer__aes-128.pdf")
    with pytest.raises(ValueError, match="cannot be opened"):
        render_pdf_page(encrypted, 1, dpi=50)
    assert render_pdf_page(encrypted, 1, dpi=50, password="foo").size[0] > 0
    with pytest.raises(ValueError, match="cannot be opened"):
        render_pdf_page(b"%PDF-1.4\n%%EOF\n", 1)


def test_rendered_page_survives_its_document() -> None:
    # The image is a copy, not a view of pdfium's bitmap: it stays valid after the PDF is closed.
    buffer = io.BytesIO()
    Image.new("L", (200, 100), 0).save(buffer, format="PDF", resolution=72)
    page = render_pdf_page(buffer.getvalue(), 1, dpi=72)

    assert page.size == (200, 100)
    assert page.getextrema() == (0, 0)


# -- the question set for integration tests (tests/data/ocr_questions.json) -----------------------------
def test_question_set_names_real_pages_and_words_ocr_recovers(shared_pdf_dir: Path, results) -> None:
    questions = json.loads((Path(__file__).parents[1] / "data" / "ocr_questions.json").read_text(encoding="utf-8"))
    image_only = {
        "camelot__image.pdf",
        "ocrmypdf__c02-22.pdf",
        "ocrmypdf__linn.pdf",
        "ocrmypdf__skew.pdf",
        "ocrmypdf__cardinal.pdf",
        "ocrmypdf__francais.pdf",
        "docling__nemotron_multipage.pdf",
        "docling__ocr_test.pdf",
        "unstructured__loremipsum-flat.pdf",
        "unstructured__single_table.pdf",
        "unstructured__table-multi-row-column-cells.pdf",
    }

    assert image_only <= {q["file"] for q in questions}
    for q in questions:
        assert set(q) == {"file", "page", "question", "expect"} and q["question"].strip() and q["expect"]
        path = (shared_pdf_dir if q["file"].endswith(".pdf") else DOCS_DIR) / q["file"]
        assert path.is_file(), path
    # The pages this module reads anyway: their expected words are in what OCR returned.
    read = {
        ("ocrmypdf__francais.pdf", 1): "francais",
        ("ocrmypdf__typewriter.png", 1): "typewriter",
        ("unstructured__english-and-korean.png", 1): "korean",
        ("docling__2206.01062.tif", 1): "tiff_frame_1",
    }
    checked = 0
    for q in questions:
        if (q["file"], q["page"]) in read:
            text = results[read[q["file"], q["page"]]].text.lower()
            assert all(word.lower() in text for word in q["expect"]), q
            checked += 1
    assert checked == 5
