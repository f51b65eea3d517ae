"""OCR for PDF pages without a text layer and for image files: Tesseract, run as a subprocess.

`render_pdf_page` rasterizes one PDF page with pypdfium2, `image_frames` decodes a PNG, JPEG or
TIFF file (every TIFF frame), and `TesseractOcr.read` turns one image into reading-order text with
a mean word confidence. Tesseract itself is a system package (scripts/ensure_ocr.sh).

How a page is read (each step measured on the scans in shared/data, CPU seconds with one thread):

1. Deskew with Pillow: a projection-profile search over +-5 degrees on a 600 px copy (0.1-0.3 s).
   Tesseract reads the 2-degree skew of ocrmypdf skew.pdf with lines run into each other (97% of
   the words of the straight scan in order); deskewed, 99.5%. 0.7-degree skews read better too.
   Angles under MIN_SKEW are left alone.
2. One Tesseract run (`--psm 3`, TSV output): text and word confidences come from the same run,
   in all configured languages at once. Choosing languages by OSD's script instead would cost more
   (OSD 1.65 s + eng+fra+nld 3.13 s against 3.58 s for eng+fra+nld+kor, medians over 33 pages) and
   loses the Korean of mixed pages, which OSD calls Latin.
3. Only when that run finds words but reads them badly (mean confidence under MIN_CONFIDENCE):
   orientation detection (`--psm 0`). If it says the page is turned, the turned page is read again
   and kept when it reads better. OSD costs 57% of a read, so upright pages skip it. Pages that
   need a 90 or 180 degree turn read as garbage at about 55 and cost about three reads; pages
   that need 270 degrees are read correctly by Tesseract as they are (rotation 0).
4. Images without a usable resolution whose text Tesseract estimates under MIN_TEXT_DPI (a 612x792
   TIFF of a paper page: 46 -> 91 mean confidence) are enlarged to `dpi` and read again.

Tesseract runs with OMP_THREAD_LIMIT=1 (Ray runs one parse task per core), reads the image from
stdin and writes to stdout, so nothing touches the disk and concurrent calls do not interfere.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pypdfium2 as pdfium
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

log = logging.getLogger(__name__)

ENGINE_NOT_INSTALLED = "OCR engine not installed"
# Raised when what this module does to a page changes its text (part of TesseractOcr.signature).
REVISION = 1
# Larger pages are rendered (or scaled) down to this many pixels: Tesseract's time grows with the
# area, and at 300 dpi this still holds an A2 sheet.
MAX_PIXELS = 40_000_000
# Below this mean word confidence a read is suspect: the page may be turned (an upside-down page
# reads at about 55; upright scans, tables and charts read at 70 to 96).
MIN_CONFIDENCE = 70.0
# Image resolutions outside this range are not passed to Tesseract (a TIFF saying 1 dpi); it then
# estimates the resolution from the text, and text estimated under MIN_TEXT_DPI is enlarged (to
# TesseractOcr.dpi).
TRUSTED_DPI = (150, 1200)
MIN_TEXT_DPI = 140
MAX_UPSCALE = 4.0
# Deskew: search +-MAX_SKEW degrees, correct from MIN_SKEW degrees on.
MAX_SKEW = 5
MIN_SKEW = 0.5


class OcrUnavailable(Exception):
    """No OCR possible on this machine: `reason` says why ("OCR engine not installed")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OcrError(RuntimeError):
    """Tesseract failed on one image (it crashed, timed out, or could not read the image)."""


@dataclass(frozen=True)
class OcrText:
    text: str  # reading order: lines joined by "\n", paragraphs and blocks separated by "\n\n"
    confidence: float  # mean word confidence 0-100 over words with conf >= 0 (0.0 if no words)
    rotation: int  # degrees the page was turned clockwise before recognition: 0, 90, 180, 270
    languages: str  # the tesseract -l value used, e.g. "eng+fra"


@dataclass(frozen=True)
class _Word:
    block: int
    par: int
    line: int
    conf: float
    text: str


@dataclass(frozen=True)
class _Read:
    words: list[_Word]
    estimated_dpi: int | None  # Tesseract's estimate when it was given no resolution

    @property
    def confidence(self) -> float:
        scores = [word.conf for word in self.words if word.conf >= 0]
        return sum(scores) / len(scores) if scores else 0.0


class TesseractOcr:
    """Tesseract through its command line. Cheap to make: the binary is probed on first use."""

    def __init__(
        self,
        languages: Sequence[str] = ("eng", "fra", "nld", "kor"),
        tesseract_cmd: str = "tesseract",
        dpi: int = 300,
        timeout_s: float = 120.0,
        osd: bool = True,
        deskew: bool = True,
    ):
        if isinstance(languages, str):
            languages = languages.replace(",", "+").split("+")
        self.configured_languages = tuple(lang.strip() for lang in languages if lang.strip())
        self.tesseract_cmd = tesseract_cmd
        self.dpi = dpi  # images whose text Tesseract estimates under MIN_TEXT_DPI are enlarged to this
        self.timeout_s = timeout_s
        self.osd = osd
        self.deskew = deskew
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        self._engine: str | None = None
        self._installed: frozenset[str] | None = None

    @property
    def engine(self) -> str:
        """'tesseract 5.3.0'. Also checks that some configured language is installed, so that a
        successful probe means pages can be read."""
        if self._engine is None:
            result = self._run(["--version"], check=False)
            output = (result.stdout or result.stderr).decode(errors="replace").strip()  # 3.x wrote to stderr
            first = output.splitlines()[0].strip() if output else ""
            if result.returncode != 0 or not first.startswith("tesseract "):
                raise OcrUnavailable(f"OCR engine not usable: {self.tesseract_cmd} --version: {first or _last_line(result.stderr)}")
            _ = self.languages
            self._engine = first
        return self._engine

    @property
    def languages(self) -> str:
        """The -l value: the configured languages that are installed, in the configured order."""
        usable = [lang for lang in self.configured_languages if lang in self.installed_languages]
        if not usable:
            missing = ", ".join(self.configured_languages) or "(none configured)"
            raise OcrUnavailable(f"OCR languages not installed: {missing}")
        return "+".join(usable)

    @property
    def installed_languages(self) -> frozenset[str]:
        """What `tesseract --list-langs` reports (osd included when installed)."""
        if self._installed is None:
            result = self._run(["--list-langs"], check=False)
            if result.returncode != 0:
                raise OcrUnavailable(f"OCR languages cannot be listed: {_last_line(result.stderr)}")
            listing = result.stdout.decode(errors="replace").splitlines()  # a header line, then one per line
            self._installed = frozenset(line.strip() for line in listing[1:] if line.strip())
            missing = [lang for lang in self.configured_languages if lang not in self._installed]
            if missing and len(missing) < len(self.configured_languages):
                log.warning("OCR languages not installed, reading without them: %s", ", ".join(missing))
        return self._installed

    @property
    def signature(self) -> str:
        """What decides the text read, for parse signatures: 'tesseract 5.3.0 eng+fra+nld+kor 300dpi ocr-r1'."""
        return f"{self.engine} {self.languages} {self.dpi}dpi ocr-r{REVISION}"

    def read(self, image: Image.Image) -> OcrText:
        """Text of one page image, within timeout_s for all its Tesseract runs together.
        Raises OcrUnavailable (no engine) or OcrError (this image failed or took too long)."""
        languages = self.languages
        deadline = time.monotonic() + self.timeout_s
        page, dpi = _prepare(image)
        if self.deskew:
            page = deskew(page)
        best = self._recognize(page, dpi, languages, deadline)
        if dpi is None and best.estimated_dpi and best.estimated_dpi < MIN_TEXT_DPI:
            factor = min(MAX_UPSCALE, self.dpi / best.estimated_dpi)
            page = page.resize((round(page.width * factor), round(page.height * factor)), Image.Resampling.LANCZOS)
            page, _ = _fit(page)
            best = self._recognize(page, dpi, languages, deadline)
        rotation = 0
        if self.osd and best.words and best.confidence < MIN_CONFIDENCE and "osd" in self.installed_languages:
            turn = self.orientation(page, dpi, deadline)
            if turn:
                turned = self._recognize(page.rotate(-turn, expand=True, fillcolor=255), dpi, languages, deadline)
                if turned.confidence > best.confidence:
                    best, rotation = turned, turn
        return OcrText(_layout(best.words), round(best.confidence, 2), rotation, languages)

    def orientation(self, image: Image.Image, dpi: int | None = None, deadline: float | None = None) -> int:
        """Degrees to turn the image clockwise to make it upright (Tesseract OSD), 0 when OSD cannot
        tell (too little text, or the osd language is not installed)."""
        result = self._run(["-", "stdout", "--psm", "0"], _encode(image, dpi), check=False, deadline=deadline)
        fields = dict(line.split(": ", 1) for line in result.stdout.decode(errors="replace").splitlines() if ": " in line)
        try:
            rotate = int(fields["Rotate"]) % 360
        except (KeyError, ValueError):
            log.debug("OSD could not tell the orientation: %s", _last_line(result.stderr))
            return 0
        return rotate if rotate in (90, 180, 270) else 0

    def _recognize(self, image: Image.Image, dpi: int | None, languages: str, deadline: float) -> _Read:
        args = ["-", "stdout", "-l", languages, "--psm", "3"]
        if dpi:
            args += ["--dpi", str(dpi)]
        result = self._run([*args, "tsv"], _encode(image, dpi), deadline=deadline)
        estimate = re.search(rb"Estimating resolution as (\d+)", result.stderr)
        return _Read(_parse_tsv(result.stdout.decode("utf-8", errors="replace")), int(estimate.group(1)) if estimate else None)

    def _run(
        self, args: list[str], stdin: bytes | None = None, check: bool = True, deadline: float | None = None
    ) -> subprocess.CompletedProcess:
        timeout = self.timeout_s if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            raise OcrError(f"tesseract took longer than {self.timeout_s:g} s")
        try:
            result = subprocess.run(
                [self.tesseract_cmd, *args], check=False, input=stdin, capture_output=True, env=self._env, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise OcrUnavailable(ENGINE_NOT_INSTALLED) from exc
        except PermissionError as exc:
            raise OcrUnavailable(f"OCR engine not usable: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise OcrError(f"tesseract took longer than {self.timeout_s:g} s") from exc
        if check and result.returncode != 0:
            raise OcrError(f"tesseract failed (exit {result.returncode}): {_last_line(result.stderr)}")
        return result


def render_pdf_page(data: bytes, page_number: int, dpi: int = 300, password: str | None = None) -> Image.Image:
    """One PDF page (1-based) as a grayscale image at `dpi`, or lower for pages over MAX_PIXELS.
    The resolution used is in `image.info["dpi"]`. Raises ValueError for an unreadable PDF or page."""
    try:
        pdf = pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as exc:
        raise ValueError(f"PDF cannot be opened for rendering: {exc}") from exc
    try:
        if not 1 <= page_number <= len(pdf):
            raise ValueError(f"page {page_number} does not exist (the PDF has {len(pdf)} pages)")
        page = pdf[page_number - 1]
        try:
            width, height = page.get_size()  # points, 1/72 inch
            scale = min(dpi / 72, math.sqrt(MAX_PIXELS / max(1.0, width * height)))
            image = page.render(scale=scale, grayscale=True).to_pil().copy()  # copy: the bitmap goes with the page
        except pdfium.PdfiumError as exc:
            raise ValueError(f"page {page_number} cannot be rendered: {exc}") from exc
        finally:
            page.close()
    finally:
        pdf.close()
    image.info["dpi"] = (round(scale * 72),) * 2
    return image


def image_frames(data: bytes) -> list[Image.Image]:
    """Every frame of a PNG, JPEG or TIFF file (a TIFF page is a frame), upright per EXIF.
    Raises ValueError with the reason when the bytes are no decodable image."""
    try:
        image = Image.open(io.BytesIO(data))
        frames = [ImageOps.exif_transpose(frame) for frame in ImageSequence.Iterator(image)]  # copies, loaded
    except UnidentifiedImageError as exc:
        raise ValueError("not an image file Pillow can read (PNG, JPEG, TIFF)") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ValueError(f"image cannot be decoded: {exc}") from exc
    if not frames:
        raise ValueError("image file has no frames")
    return frames


def deskew(image: Image.Image) -> Image.Image:
    """The image turned by its skew angle when that is at least MIN_SKEW degrees, else itself."""
    angle = skew_angle(image)
    if abs(angle) < MIN_SKEW:
        return image
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)


def skew_angle(image: Image.Image, width: int = 600) -> float:
    """Counter-clockwise degrees (to 0.1) that make text lines horizontal: the angle whose row
    profile of a small black-and-white copy has the sharpest edges. 0.0 for a page without lines."""
    gray = image if image.mode == "L" else image.convert("L")
    factor = max(1, gray.width // width)
    small = gray.reduce(factor) if factor > 1 else gray
    ink = small.point(lambda value: 255 if value < 160 else 0)

    def sharpness(angle: float) -> int:
        turned = ink.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=0)
        profile = turned.resize((1, turned.height), Image.Resampling.BOX).tobytes()  # row means
        return sum((b - a) ** 2 for a, b in itertools.pairwise(profile))

    coarse = max(range(-MAX_SKEW, MAX_SKEW + 1), key=lambda a: (sharpness(a), -abs(a)))
    fine = [coarse + step / 10 for step in range(-6, 7)]
    return round(max(fine, key=lambda a: (sharpness(a), -abs(a))), 1)


def _prepare(image: Image.Image) -> tuple[Image.Image, int | None]:
    """8-bit grayscale on white, at most MAX_PIXELS, and the resolution to tell Tesseract (None:
    unknown or implausible, Tesseract estimates it)."""
    dpi = image.info.get("dpi")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    gray = image if image.mode == "L" else image.convert("L")
    gray, factor = _fit(gray)
    try:
        resolution = round(float(dpi[0]) * factor) if dpi else None
    except (TypeError, ValueError, IndexError):
        resolution = None
    if resolution is not None and not TRUSTED_DPI[0] <= resolution <= TRUSTED_DPI[1]:
        resolution = None
    return gray, resolution


def _fit(image: Image.Image) -> tuple[Image.Image, float]:
    pixels = image.width * image.height
    if pixels <= MAX_PIXELS:
        return image, 1.0
    factor = math.sqrt(MAX_PIXELS / pixels)
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS), factor


def _encode(image: Image.Image, dpi: int | None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, **({"dpi": (dpi, dpi)} if dpi else {}))
    return buffer.getvalue()


def _parse_tsv(tsv: str) -> list[_Word]:
    """The word rows (level 5) of Tesseract's TSV: level page block par line word left top width
    height conf text. A word's text may be empty (a blob that held no character); those are dropped."""
    words = []
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5" or not cells[11].strip():
            continue
        try:
            words.append(_Word(int(cells[2]), int(cells[3]), int(cells[4]), float(cells[10]), cells[11].strip()))
        except ValueError:
            continue
    return words


def _layout(words: Sequence[_Word]) -> str:
    """Words in Tesseract's reading order: a space within a line, a newline between lines, a blank
    line between paragraphs and between blocks."""
    parts: list[str] = []
    previous: _Word | None = None
    for word in words:
        if previous is not None:
            if (word.block, word.par) != (previous.block, previous.par):
                parts.append("\n\n")
            elif word.line != previous.line:
                parts.append("\n")
            else:
                parts.append(" ")
        parts.append(word.text)
        previous = word
    return "".join(parts)


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
