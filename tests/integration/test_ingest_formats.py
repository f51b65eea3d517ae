"""Every format users keep, through `ray job submit` on the real shared documents
(../shared/data/docs, all but five bulk files: see BULK), then found through `/v1/retrieve` with
its location."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import pytest

from rag_core.index_store import VersionedIndex
from tests.conftest import SHARED_DATA
from tests.integration.conftest import IMAGE_FILE_FACTS, IMAGE_PDF_FACTS, assert_found_by_ocr, submit_ingest_job
from tests.integration.test_serve_app import wait_for

# The module-scoped index (OCR of every image) is built inside the first test that asks for it.
pytestmark = pytest.mark.timeout(2400)

DOCS_DIR = SHARED_DATA / "docs"
OFFICE_PASSWORD = "Password1234_"  # msoffcrypto-tool's test file (docs/README.md)


def docs_manifest() -> list[dict[str, str]]:
    with (DOCS_DIR / "MANIFEST.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# Five bulk files are 7,128 of the folder's 7,965 chunks (a 13,000-row CSV, an 872-page handbook,
# a 460 KB preformatted page, a book-length EPUB, a CSV of long lines): embedding them took about
# 4 of the fixture's 6 minutes and asks nothing of a format the rest does not. Every one of them is
# still parsed and checked for located text in tests/unit/test_formats.py; the job indexes the rest.
BULK = {
    "gdp__gdp.csv",
    "unstructured__handbook-872p.docx",
    "unstructured__fake-html-pre.htm",
    "unstructured__winter-sports.epub",
    "unstructured__csv-with-long-lines.csv",
}


@pytest.fixture(scope="module")
def docs_index(tmp_path_factory, ray_cluster):
    """The shared documents but the bulk ones (every format, every bad input, the folder's README
    and MANIFEST.tsv), indexed by the job as submitted to the cluster (no passwords)."""
    if not (DOCS_DIR / "MANIFEST.tsv").is_file():
        pytest.fail(f"shared test data missing: {DOCS_DIR}")
    root = tmp_path_factory.mktemp("docs-index")
    source = root / "docs"
    shutil.copytree(DOCS_DIR, source, ignore=lambda _, names: [n for n in names if n in BULK])
    index_dir = root / "index"
    process, summary = submit_ingest_job(ray_cluster, str(source), {"RAG_INDEX_DIR": str(index_dir)})
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    return index_dir, summary


def serve_index(serve_http: str, name: str, index_dir: Path):
    from ray import serve

    from rag_core.settings import load_settings
    from serve_app.app import build_graph
    from tests.conftest import REPO_ROOT

    settings = load_settings(REPO_ROOT / "configs" / "rag.yaml", index_dir=index_dir, auth={"rate_limit_enabled": False})
    serve.run(build_graph(settings), name=name, route_prefix=f"/{name}")
    base = f"{serve_http}/{name}"
    wait_for(f"{base}/health")
    return base


@pytest.fixture(scope="module")
def docs_service(docs_index, serve_http):
    from ray import serve

    yield serve_index(serve_http, "formats", docs_index[0])
    serve.delete("formats")


def retrieve(base: str, question: str, top_k: int = 10) -> list[dict]:
    response = httpx.post(f"{base}/v1/retrieve", json={"query": question, "top_k": top_k}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_every_good_document_is_indexed_and_every_bad_input_is_listed_with_a_reason(docs_index):
    _, summary = docs_index
    rows = [row for row in docs_manifest() if row["filename"] not in BULK]
    assert len(rows) == len(docs_manifest()) - len(BULK)
    good = {row["filename"] for row in rows if not row["expected"].startswith("bad-input")}
    bad = {row["filename"] for row in rows if row["expected"].startswith("bad-input")}
    failed = {entry["file"]: entry["reason"] for entry in summary["files_failed"]}

    assert set(failed) == bad, failed
    # The folder's README.md is a document too (MANIFEST.tsv is not a listed type: ignored).
    assert summary["files_indexed"] == len(good) + 1
    assert summary["files_seen"] == len(rows) + 1
    assert summary["files_incomplete"] == []
    assert failed["file-scraper__invalid__empty.docx"] == "empty file (0 bytes)"
    assert "corrupt or truncated .docx" in failed["file-scraper__invalid_2007_onwards_corrupted.docx"]
    assert "corrupt or truncated .pptx" in failed["file-scraper__invalid_2007_onwards_corrupted.pptx"]
    for encrypted in ("msoffcrypto__example_password.docx", "unstructured__password_protected.xlsx"):
        assert "password-protected" in failed[encrypted] and "ingest.passwords" in failed[encrypted]
    assert summary["files_ignored"] == 1


# (question, file, what its location must say, words the passage must hold)
FACTS = [
    (
        "How many Stanley Cups have the Maple Leafs won?",
        "unstructured__stanley-cups.xlsx",
        {"kind": "sheet"},
        ["Team: Maple Leafs | Location: TOR | Stanley Cups:"],
    ),
    ("What was the mean CO2 concentration at Mauna Loa in 1959?", "co2-ppm__co2-annmean-mlo.csv", {"kind": "sheet"}, ["1959", "315.98"]),
    (
        "Wild duck observations by year chart: how many freshwater ducks in 2021?",
        "docling__pptx_chart.pptx",
        {"kind": "slide", "slide": 1},
        ["Freshwater Ducks", "2021: 150"],
    ),
    (
        "Which table on the slide lists Purple, Orange and Yellow?",
        "unstructured__fake-power-point-table.pptx",
        {"kind": "slide", "slide": 1},
        ["Purple"],
    ),
    ("Who leads on Wednesday in the schedule table?", "unstructured__fake.odt", {"kind": "section"}, ["Wed: Mark"]),
    (
        "What classification is the SNB22-3 steel grade?",
        "unstructured__example-steelJIS-datasheet.html",
        {"kind": "section"},
        ["Chromium molybdenum"],
    ),
    (
        "Test EPUB chapter with a bullet point and another point",
        "markitdown__test.epub",
        {"kind": "section", "heading": "Test EPUB Document > Chapter 1: Test Content"},
        ["bullet point"],
    ),
    ("Which tables have horizontal and vertical merged cells?", "docling__word_tables.docx", {"kind": "section"}, ["Merged Cell"]),
]


@pytest.mark.parametrize(("question", "file", "location", "words"), FACTS, ids=[f[1] for f in FACTS])
def test_a_fact_from_each_format_is_retrieved_with_its_location(docs_service, question, file, location, words):
    response = httpx.post(f"{docs_service}/v1/retrieve", json={"query": question, "top_k": 10}, timeout=60)
    assert response.status_code == 200, response.text
    hits = [hit for hit in response.json()["results"] if hit["file"] == file]
    assert hits, [hit["file"] for hit in response.json()["results"]]
    best = hits[0]
    for key, value in location.items():
        assert best["location"][key] == value, best["location"]
    assert best["page"] == best["location"]["page"]  # older clients keep reading `page`
    for word in words:
        assert word in best["text"], best["text"]
    if location["kind"] == "sheet":
        assert best["location"]["rows"], best["location"]  # a spreadsheet chunk names its rows


# The OCR'd pages of the image-only PDFs are asked through the README's `serve run` service over
# the session's PDF index (tests/integration/test_serve_app.py), which serves that index anyway.
def test_every_image_only_pdf_has_a_question():
    rows = list(csv.DictReader((SHARED_DATA / "pdfs" / "MANIFEST.tsv").open(newline=""), delimiter="\t"))
    scans = {r["filename"] for r in rows if r["extractable_text"] == "no" and r["category"].startswith("scanned")}
    assert len(scans) == 11 and scans <= {fact["file"] for fact in IMAGE_PDF_FACTS}


@pytest.mark.parametrize("fact", IMAGE_FILE_FACTS, ids=[f"{f['file']}-{i}" for i, f in enumerate(IMAGE_FILE_FACTS)])
def test_each_image_file_is_searchable_through_ocr(docs_service, fact):
    assert_found_by_ocr(retrieve(docs_service, fact["question"]), fact)


def test_query_sources_name_slide_and_sheet(docs_service):
    body = httpx.post(f"{docs_service}/v1/query", json={"question": "How many Stanley Cups have the Maple Leafs won?"}, timeout=60).json()
    sheet_sources = [s for s in body["sources"] if s["file"] == "unstructured__stanley-cups.xlsx"]
    # The workbook's two sheets both list the Maple Leafs; either is a right citation.
    assert sheet_sources and sheet_sources[0]["location"]["sheet"] in {"Stanley Cups", "Stanley Cups Since 67"}
    assert sheet_sources[0]["location"]["rows"]
    slide = httpx.post(
        f"{docs_service}/v1/query",
        json={"question": "How many freshwater ducks were observed in 2021 in the duck survey chart?"},
        timeout=60,
    ).json()
    assert any(
        s["location"]["kind"] == "slide" and s["location"]["slide"] == 1
        for s in slide["sources"]
        if s["file"] == "docling__pptx_chart.pptx"
    )


def test_rerun_embeds_nothing_and_a_changed_docx_reindexes_only_itself(tmp_path, ray_cluster):
    source, index_dir = tmp_path / "docs", tmp_path / "index"
    source.mkdir()
    for name in (
        "r2r__docx.docx",
        "docling__word_tables.docx",
        "unstructured__stanley-cups.xlsx",
        "r2r__pptx.pptx",
        "msoffcrypto__example_password.docx",
    ):
        shutil.copy(DOCS_DIR / name, source / name)
    env = {"RAG_INDEX_DIR": str(index_dir), "RAG_INGEST__PASSWORDS": json.dumps([OFFICE_PASSWORD])}
    process, first = submit_ingest_job(ray_cluster, str(source), env)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert first["files_indexed"] == 5 and first["files_failed"] == []  # the password opens the encrypted .docx

    process, again = submit_ingest_job(ray_cluster, str(source), env)
    assert again["new_version_created"] is False and again["chunks_added"] == 0 and again["files_unchanged"] == 5

    shutil.copy(DOCS_DIR / "docling__word_sample.docx", source / "r2r__docx.docx")  # new content, same name
    process, changed = submit_ingest_job(ray_cluster, str(source), env)
    assert changed["files_indexed"] == 1 and changed["files_unchanged"] == 4 and changed["files_reparsed"] == 0
    manifest = VersionedIndex(index_dir).manifest(changed["index_version"]).of_source(source.name)
    assert manifest["r2r__docx.docx"].index_version == changed["index_version"]
    assert {manifest[name].index_version for name in manifest if name != "r2r__docx.docx"} == {first["index_version"]}
    assert all(entry.parse_signature.startswith(("docx/", "xlsx/", "pptx/")) for entry in manifest.values())


def test_parse_signature_changes_reparse_exactly_the_files_they_affect(tmp_path, ray_cluster):
    """Installing OCR where it was missing, turning PDF tables off and changing PII settings each
    re-parse the files whose text they decide, and the summary says why."""
    from tests.integration.conftest import run_ingest

    source, index_dir = tmp_path / "docs", tmp_path / "index"
    source.mkdir()
    shutil.copy(DOCS_DIR / "r2r__docx.docx", source / "arch.docx")
    shutil.copy(SHARED_DATA / "pdfs" / "ocrmypdf__multipage.pdf", source / "mixed.pdf")  # page 4 has text, 5 are scans
    shutil.copy(SHARED_DATA / "pdfs" / "ocrmypdf__c02-22.pdf", source / "scan.pdf")
    (source / "notes.txt").write_text("The loading dock closes at six on Fridays.\n")

    no_ocr = run_ingest(index_dir, ray_cluster, "--source", str(source), RAG_INGEST__OCR__TESSERACT_CMD="/nonexistent/tesseract")
    assert no_ocr.returncode == 0, no_ocr.stderr[-3000:]
    failed = {f["file"]: f["reason"] for f in no_ocr.summary["files_failed"]}
    assert set(failed) == {"scan.pdf"} and "OCR engine not installed" in failed["scan.pdf"]
    assert no_ocr.summary["files_incomplete"] == [{"file": "mixed.pdf", "reason": "pages 1-3, 5-6 are images: OCR engine not installed"}]
    manifest = VersionedIndex(index_dir).manifest(no_ocr.summary["index_version"]).of_source(source.name)
    assert manifest["mixed.pdf"].parse_signature.endswith("; ocr unavailable")

    with_ocr = run_ingest(index_dir, ray_cluster, "--source", str(source))
    s = with_ocr.summary
    assert s["files_failed"] == [] and s["files_incomplete"] == []
    assert s["files_reparsed"] == 1 and len(s["reparse_reasons"]) == 1
    (reason,) = s["reparse_reasons"]
    assert reason.startswith("ocr: ocr unavailable -> ocr tesseract")
    assert s["files_indexed"] == 2 and s["files_unchanged"] == 2  # the scan (new) and mixed.pdf (reparsed)

    tables_off = run_ingest(index_dir, ray_cluster, "--source", str(source), RAG_INGEST__PDF_TABLES="false").summary
    assert tables_off["files_reparsed"] == 2 and tables_off["files_unchanged"] == 2
    assert all(r.startswith("parser: pdf/") for r in tables_off["reparse_reasons"])

    stricter = run_ingest(
        index_dir, ray_cluster, "--source", str(source), RAG_INGEST__PDF_TABLES="false", RAG_INGEST__PII__SCORE_THRESHOLD="0.5"
    ).summary
    assert stricter["files_reparsed"] == 4 and stricter["files_unchanged"] == 0
    assert all(r.startswith("pii: pii/") for r in stricter["reparse_reasons"])
    assert stricter["full_rebuild_reason"] is None  # re-parsed file by file, not a full rebuild

    # OCR gone: the scan cannot be read again, and keeps the text it was indexed with.
    lost = run_ingest(
        index_dir,
        ray_cluster,
        "--source",
        str(source),
        RAG_INGEST__PDF_TABLES="false",
        RAG_INGEST__PII__SCORE_THRESHOLD="0.5",
        RAG_INGEST__OCR__TESSERACT_CMD="/nonexistent/tesseract",
    ).summary
    incomplete = {entry["file"]: entry["reason"] for entry in lost["files_incomplete"]}
    assert lost["files_failed"] == []
    assert "OCR engine not installed" in incomplete["scan.pdf"] and "the previous text is kept" in incomplete["scan.pdf"]
    assert "OCR engine not installed" in incomplete["mixed.pdf"]  # read again: its text page only
    kept = VersionedIndex(index_dir).manifest(lost["index_version"]).of_source(source.name)["scan.pdf"]
    assert kept.chunk_ids and "; ocr tesseract" in kept.parse_signature  # the entry it was indexed with
