"""Parse throughput per format, OCR pages per second per core, and OCR's share of a mixed run.

Every file of ../shared/data/docs and ../shared/data/pdfs (read in place) goes through the real
parser (`rag_core.parsing.DocumentParser`, OCR and PDF tables on, as the job's defaults) in one
process pinned to one core, with Tesseract limited to one thread: the figures are per core, as one
Ray parse task runs. Times are CPU seconds of this process and its Tesseract subprocesses, so a
busy machine does not inflate them (wall time is printed beside them). Each file is parsed
`--repeat` times; a file's time is its median. OCR time is measured inside the engine.

    python benchmarks/parse_throughput.py [--repeat 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus() -> list[tuple[Path, str]]:
    """(path, password) for every shared document; passwords from the manifests."""
    files: list[tuple[Path, str]] = []
    with (SHARED / "pdfs" / "MANIFEST.tsv").open(newline="") as handle:
        files += [(SHARED / "pdfs" / row["filename"], row["password"]) for row in csv.DictReader(handle, delimiter="\t")]
    with (SHARED / "docs" / "MANIFEST.tsv").open(newline="") as handle:
        files += [(SHARED / "docs" / row["filename"], "") for row in csv.DictReader(handle, delimiter="\t")]
    return files


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the Tesseract runs)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class TimedOcr:
    """The real engine, with the CPU seconds and pages it spends counted."""

    def __init__(self, engine):
        self.inner = engine
        self.seconds = 0.0
        self.pages = 0

    @property
    def engine(self) -> str:
        return self.inner.engine

    @property
    def signature(self) -> str:
        return self.inner.signature

    def read(self, image):
        started = cpu_seconds()
        try:
            return self.inner.read(image)
        finally:
            self.seconds += cpu_seconds() - started
            self.pages += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as one parse task
    os.environ["OMP_THREAD_LIMIT"] = "1"
    from rag_core.ocr import TesseractOcr
    from rag_core.parsing import DocumentParseError, DocumentParser, format_of
    from rag_core.settings import OCRSettings

    ocr_settings = OCRSettings()
    timed = TimedOcr(TesseractOcr(tuple(ocr_settings.languages), ocr_settings.tesseract_cmd, ocr_settings.dpi, ocr_settings.timeout_s))
    per_format: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total_cpu = total_ocr = total_wall = 0.0
    ocr_pages = 0
    for path, password in corpus():
        data = path.read_bytes()
        fmt = format_of(path.name).name
        cpus, ocrs, walls = [], [], []
        pages = chars = 0
        failed = False
        for _ in range(args.repeat):
            timed.seconds, timed.pages = 0.0, 0
            document_parser = DocumentParser([password] if password else [], ocr_factory=lambda: timed, ocr_dpi=ocr_settings.dpi)
            started, started_wall = cpu_seconds(), time.perf_counter()
            try:
                document = document_parser.parse(path.name, data)
                chars, pages = document.text_chars, len(document.segments)
            except DocumentParseError:
                failed = True
            cpus.append(cpu_seconds() - started)
            walls.append(time.perf_counter() - started_wall)
            ocrs.append(timed.seconds)
            file_ocr_pages = timed.pages
        cpu, ocr, wall = statistics.median(cpus), statistics.median(ocrs), statistics.median(walls)
        stats = per_format[fmt]
        stats["files"] += 1
        stats["failed"] += failed
        stats["bytes"] += len(data)
        stats["seconds"] += cpu
        stats["segments"] += pages
        stats["chars"] += chars
        stats["ocr_seconds"] += ocr
        stats["ocr_pages"] += file_ocr_pages
        total_cpu += cpu
        total_wall += wall
        total_ocr += ocr
        ocr_pages += file_ocr_pages
        print(
            json.dumps(
                {
                    "file": path.name,
                    "format": fmt,
                    "cpu_s": round(cpu, 3),
                    "wall_s": round(wall, 3),
                    "ocr_pages": file_ocr_pages,
                    "ocr_seconds": round(ocr, 3),
                    "failed": failed,
                }
            ),
            flush=True,
        )

    print("\n| format | files (failed) | MB | parse CPU s | MB/s | segments/s | chars/s | OCR pages | OCR CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, s in sorted(per_format.items()):
        print(
            f"| {fmt} | {int(s['files'])} ({int(s['failed'])}) | {s['bytes'] / 2**20:.2f} "
            f"| {s['seconds']:.1f} | {s['bytes'] / 2**20 / s['seconds']:.2f} | "
            f"{s['segments'] / s['seconds']:.0f} | {s['chars'] / s['seconds']:,.0f} | {int(s['ocr_pages'])} | {s['ocr_seconds']:.1f} |"
        )
    rate = ocr_pages / total_ocr if total_ocr else 0.0
    print(
        f"\nOCR: {ocr_pages} pages in {total_ocr:.1f} CPU s on one core = {rate:.2f} "
        f"pages/s per core ({total_ocr / max(ocr_pages, 1):.2f} s per page)"
    )
    print(
        f"mixed run (every shared document, one core): {total_cpu:.1f} CPU s ({total_wall:.1f} "
        f"s wall), of which OCR {total_ocr:.1f} s = {total_ocr / total_cpu:.0%}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "formats": per_format,
                    "ocr_pages": ocr_pages,
                    "ocr_cpu_seconds": total_ocr,
                    "cpu_seconds": total_cpu,
                    "wall_seconds": total_wall,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
