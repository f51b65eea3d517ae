"""What PII redaction replaces in a real corpus: every finding, per file, page and type.

    python benchmarks/pii_corpus_scan.py [--source ../shared/data/pdfs] [--out benchmarks/results/pii_corpus_findings.tsv]
    python benchmarks/pii_corpus_scan.py --stock --out /tmp/stock.tsv   # Presidio's stock recognizers, for comparison

Files are read through the ingest parse path (`rag_core.parsing.DocumentParser`, with the
passwords from the folder's MANIFEST.tsv `password` column and OCR on, as the job reads them) and each segment goes through the
configured redactor (`ingest.pii` defaults unless overridden), exactly as the parse stage does.

The TSV lists every replacement: file, page, type, score, the matched text, about 60 characters of
context either side (newlines shown as ⏎) and a verdict with its reason. Verdicts are a reviewer's:
rows already in the output file keep theirs (matched on file, page, type and text), new rows are
written as `UNREVIEWED`. A change to the recognizers is compared by rerunning and diffing the file.
A per-type summary is printed and written next to the TSV (`pii_corpus_summary.json`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

from ingest_jobs.pipeline import ocr_factory
from ingest_jobs.redaction import PIIRedactor, non_overlapping
from rag_core.parsing import DocumentParseError, DocumentParser
from rag_core.settings import IngestSettings, OCRSettings, PIISettings

REPO_ROOT = Path(__file__).resolve().parents[1]

COLUMNS = ["file", "page", "type", "score", "matched", "context", "verdict", "reason"]
UNREVIEWED = "UNREVIEWED"


class StockRedactor:
    """Presidio's stock recognizers over a blank spaCy pipeline: what ingest did before
    recognizers revision 2 (for before/after numbers)."""

    def __init__(self, entities: list[str], score_threshold: float):
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import SpacyNlpEngine

        from ingest_jobs.redaction import NER_ENTITIES, _offline_public_suffixes

        class BlankEnglish(SpacyNlpEngine):
            def load(self) -> None:
                self.nlp = {"en": spacy.blank("en")}

        _offline_public_suffixes()
        engine = BlankEnglish(models=[{"lang_code": "en", "model_name": "blank"}])
        engine.load()
        self.analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
        supported = set(self.analyzer.get_supported_entities("en")) - NER_ENTITIES
        self.entities = [e for e in entities if e in supported]
        self.score_threshold = score_threshold
        self.signature = "presidio stock recognizers"

    def findings(self, text: str) -> list:
        if not text.strip():
            return []
        return non_overlapping(
            self.analyzer.analyze(text=text, language="en", entities=self.entities, score_threshold=self.score_threshold)
        )


def passwords_from_manifest(source: Path) -> list[str]:
    manifest = source / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with manifest.open(newline="") as handle:
        return sorted({row["password"] for row in csv.DictReader(handle, delimiter="\t") if row.get("password")})


def _flat(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎").replace("\t", " ")


def scan(source: Path, redactor, passwords: list[str], width: int = 60) -> tuple[list[dict], dict]:
    # As the ingest job reads them by default: scanned pages and images through OCR.
    ocr = OCRSettings()
    parser = DocumentParser(passwords, ocr_factory(ocr), ocr.dpi)
    rows: list[dict] = []
    extensions = set(IngestSettings().extensions)  # what the job reads by default (MANIFEST.tsv is not)
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in extensions)
    parsed = failed = segments = chars = 0
    for path in files:
        try:
            document = parser.parse(path.name, path.read_bytes())
        except DocumentParseError:
            failed += 1
            continue
        parsed += 1
        for segment in document.segments:
            segments += 1
            chars += len(segment.text)
            text = segment.text
            for finding in redactor.findings(text):
                start, end = finding.start, finding.end
                rows.append(
                    {
                        "file": path.name,
                        "page": segment.location.page,
                        "type": finding.entity_type,
                        "score": f"{finding.score:.2f}",
                        "matched": _flat(text[start:end]),
                        "context": f"{_flat(text[max(0, start - width) : start])}[[{_flat(text[start:end])}]]"
                        f"{_flat(text[end : end + width])}",
                        "verdict": UNREVIEWED,
                        "reason": "",
                    }
                )
    stats = {"files": len(files), "parsed": parsed, "not_parsed": failed, "segments": segments, "chars": chars}
    return rows, stats


def carry_verdicts(rows: list[dict], previous: Path) -> int:
    """Copy reviewed verdicts from the previous TSV onto rows with the same file, page, type, text."""
    if not previous.exists():
        return 0
    known: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    with previous.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row.get("verdict") and row["verdict"] != UNREVIEWED:
                known[(row["file"], str(row["page"]), row["type"], row["matched"])].append((row["verdict"], row.get("reason", "")))
    carried = 0
    for row in rows:
        key = (row["file"], str(row["page"]), row["type"], row["matched"])
        if known.get(key):
            row["verdict"], row["reason"] = known[key][0] if len(known[key]) == 1 else known[key].pop(0)
            carried += 1
    return carried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO_ROOT.parent / "shared/data/pdfs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/pii_corpus_findings.tsv")
    parser.add_argument("--score-threshold", type=float, default=None, help="default: ingest.pii.score_threshold")
    parser.add_argument("--stock", action="store_true", help="Presidio's stock recognizers (the behaviour before revision 2)")
    args = parser.parse_args()

    settings = PIISettings()
    threshold = settings.score_threshold if args.score_threshold is None else args.score_threshold
    if args.stock:
        redactor = StockRedactor(settings.entities, threshold)
    else:
        redactor = PIIRedactor("redact", settings.entities, threshold, settings.spacy_model)
    started = time.perf_counter()
    rows, stats = scan(args.source, redactor, passwords_from_manifest(args.source))
    elapsed = time.perf_counter() - started
    carried = carry_verdicts(rows, args.out)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    per_type = Counter(row["type"] for row in rows)
    verdicts = Counter((row["type"], row["verdict"]) for row in rows)
    summary = {
        "source": os.path.relpath(args.source, REPO_ROOT),
        "redactor": redactor.signature,
        "score_threshold": threshold,
        "entities": redactor.entities,
        **stats,
        "seconds": round(elapsed, 1),
        "replacements": dict(sorted(per_type.items())),
        "total": len(rows),
        "verdicts": {f"{kind} {verdict}": n for (kind, verdict), n in sorted(verdicts.items())},
        "files_with_findings": len({row["file"] for row in rows}),
    }
    (args.out.parent / (args.out.stem.replace("_findings", "") + "_summary.json")).write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"{stats['parsed']} of {stats['files']} files parsed, {stats['segments']} segments, {elapsed:.0f} s; "
        f"redactor {redactor.signature}; verdicts carried over: {carried}"
    )
    print("| type | replacements | true | false positive | unreviewed |")
    print("|---|---|---|---|---|")
    for kind in sorted(per_type):
        counts = [verdicts[(kind, verdict)] for verdict in ("true", "false_positive", UNREVIEWED)]
        print(f"| {kind} | {per_type[kind]} | " + " | ".join(map(str, counts)) + " |")
    totals = [sum(n for (_, v), n in verdicts.items() if v == verdict) for verdict in ("true", "false_positive", UNREVIEWED)]
    print(f"| all | {len(rows)} | " + " | ".join(map(str, totals)) + " |")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
