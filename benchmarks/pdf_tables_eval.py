"""Does pdfplumber's table extraction help retrieval on table PDFs? pypdf page text (what the
ingest does today) against the same text with each ruled table replaced by its rows in the row
format (rag_core.parsing.pdf_tables), on questions whose answer is one table cell.

Both variants: every page of every table PDF in the corpus (MANIFEST category containing "table",
with a text layer), chunked with RecursiveChunker(512, 64), embedded with the project's model,
retrieved over all chunks of all those PDFs by dense cosine, BM25 (serve_app's LexicalIndex,
k1=0.6, b=0.75) and the service's hybrid (convex fusion of min-max normalised scores over each
retriever's top fetch_k=100, dense 0.6 / lexical 0.4, serve_app.retrieval.convex_fusion).

A retrieved chunk is a HIT for a question when
  (1) it comes from the question's file and page, and
  (2) one line of the chunk holds both the answer cell's exact text (not inside a longer number:
      "20" does not match in "2012" nor "1,796" in "21,796") and the row label (case-insensitive,
      whitespace normalised).
Condition (2) does not check the column: pypdf's lines keep a row's figures together without
their headers, so the criterion is, if anything, generous to pypdf.
hit@k: a hit among the top k; MRR@10: 1/rank of the first hit within the top 10, else 0.
"answerable" counts the questions where some chunk of the variant satisfies the criterion at all.

    python benchmarks/pdf_tables_eval.py [--pdf-dir DIR] [--questions FILE] [--no-gate] [--verbose]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pypdf import PdfReader  # noqa: E402

from rag_core.chunking import RecursiveChunker  # noqa: E402
from rag_core.embedding import EmbeddingModel  # noqa: E402
from rag_core.location import Location  # noqa: E402
from rag_core.parsing.base import ParsedSegment, clean_text  # noqa: E402
from rag_core.parsing.pdf_tables import looks_tabular, table_page_texts  # noqa: E402
from serve_app.retrieval import LexicalIndex, convex_fusion  # noqa: E402

logging.getLogger("pypdf").setLevel(logging.ERROR)
logging.getLogger("pdfminer").setLevel(logging.ERROR)

DEFAULT_PDF_DIR = ROOT.parent / "shared" / "data" / "pdfs"
DEFAULT_QUESTIONS = ROOT / "benchmarks" / "data" / "pdf_table_questions.jsonl"
FETCH_K = 100
DENSE_WEIGHT, LEXICAL_WEIGHT = 0.6, 0.4
BM25_K1, BM25_B = 0.6, 0.75


@dataclass
class Chunk:
    file: str
    page: int
    text: str


def table_pdfs(pdf_dir: Path) -> list[tuple[str, str]]:
    """(file name, password) of the table PDFs that have a text layer."""
    with (pdf_dir / "MANIFEST.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        (r["filename"], r.get("password", ""))
        for r in rows
        if "table" in r["category"] and r["extractable_text"] != "no" and not r["pypdf_status"].startswith("unreadable")
    ]


def pypdf_pages(data: bytes, password: str) -> list[str]:
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        reader.decrypt(password or "")
    return [clean_text(page.extract_text() or "") for page in reader.pages]


def parse_all(pdf_dir: Path, gate: bool) -> dict:
    chunker = RecursiveChunker(512, 64)
    out = {
        "pypdf": [],
        "tables": [],
        "pages": 0,
        "gated": 0,
        "replaced": 0,
        "pypdf_s": 0.0,
        "plumber_s": 0.0,
        "replaced_pages": {},
        "texts": {},
    }
    for name, password in table_pdfs(pdf_dir):
        data = (pdf_dir / name).read_bytes()
        started = time.perf_counter()
        texts = pypdf_pages(data, password)
        out["pypdf_s"] += time.perf_counter() - started
        candidates = [n for n, text in enumerate(texts, start=1) if looks_tabular(text)] if gate else list(range(1, len(texts) + 1))
        started = time.perf_counter()
        replaced = table_page_texts(data, candidates, password or None) if candidates else {}
        out["plumber_s"] += time.perf_counter() - started
        out["pages"] += len(texts)
        out["gated"] += len(candidates)
        out["replaced"] += len(replaced)
        out["replaced_pages"][name] = sorted(replaced)
        for n, text in enumerate(texts, start=1):
            out["texts"][(name, n)] = (text, replaced.get(n, ""))
        for variant, pages in (("pypdf", texts), ("tables", [replaced.get(n, t) for n, t in enumerate(texts, start=1)])):
            segments = [ParsedSegment(text, Location("page", n)) for n, text in enumerate(pages, start=1)]
            out[variant].extend(Chunk(name, c.page, c.text) for c in chunker.chunk_segments(segments))
    return out


def unverified(questions: list[dict], texts: dict[tuple[str, int], tuple[str, str]], pdf_dir: Path) -> list[str]:
    """Questions whose answer does not occur in their page's text, by pypdf nor by pdfplumber."""
    bad = []
    for q in questions:
        pypdf_text, table_text = texts.get((q["file"], q["page"]), ("", ""))
        found = q["answer"] in pypdf_text or q["answer"] in table_text
        if not found:
            import pdfplumber

            with pdfplumber.open(str(pdf_dir / q["file"])) as pdf:
                found = q["answer"] in (pdf.pages[q["page"] - 1].extract_text() or "")
        if not found:
            bad.append(f"{q['file']} p{q['page']}: {q['answer']!r}")
    return bad


def _norm(text: str) -> str:
    return " ".join(text.split())


def is_hit(chunk: Chunk, question: dict) -> bool:
    if chunk.file != question["file"] or chunk.page != question["page"]:
        return False
    answer = re.compile(r"(?<![\d.,])" + re.escape(_norm(question["answer"])) + r"(?!\d|[.,]\d)")
    row = _norm(question["row"]).lower()
    return any(answer.search(_norm(line)) and row in _norm(line).lower() for line in chunk.text.splitlines())


def rankings(chunks: list[Chunk], vectors: np.ndarray, lexical: LexicalIndex, query: str, qvec: np.ndarray) -> dict[str, list[int]]:
    dense_scores = vectors @ qvec
    top = np.argsort(-dense_scores, kind="stable")[:FETCH_K]
    dense = [(str(i), float(dense_scores[i])) for i in top]
    bm25 = [(str(i), s) for i, s in lexical.top(query, FETCH_K)]
    hybrid = convex_fusion([(dense, DENSE_WEIGHT), (bm25, LEXICAL_WEIGHT)])
    return {
        "dense": [int(i) for i, _ in dense],
        "bm25": [int(i) for i, _ in bm25],
        "hybrid": [int(i) for i, _ in hybrid],
    }


def score(chunks: list[Chunk], ranked: list[int], question: dict) -> tuple[int, int, float]:
    hits = [rank for rank, i in enumerate(ranked[:10], start=1) if is_hit(chunks[i], question)]
    first = hits[0] if hits else None
    return int(first == 1), int(first is not None and first <= 5), (1.0 / first if first else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdf-dir", type=Path, default=DEFAULT_PDF_DIR)
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--no-gate", action="store_true", help="run pdfplumber on every page, not only those looks_tabular picks")
    parser.add_argument("--verbose", action="store_true", help="per-question first-hit ranks")
    args = parser.parse_args()

    questions = [json.loads(line) for line in args.questions.open() if line.strip()]
    parsed = parse_all(args.pdf_dir, gate=not args.no_gate)
    pages = parsed["pages"]
    print(
        f"{len(table_pdfs(args.pdf_dir))} table PDFs, {pages} pages; gate {'off' if args.no_gate else 'on'}: "
        f"pdfplumber ran on {parsed['gated']} pages, found a usable table on {parsed['replaced']}"
    )
    print(f"chunks: pypdf {len(parsed['pypdf'])}, tables {len(parsed['tables'])}; questions: {len(questions)}")
    bad = unverified(questions, parsed["texts"], args.pdf_dir)
    print(f"answers verified in their page's text: {len(questions) - len(bad)}/{len(questions)}" + (f"; NOT FOUND: {bad}" if bad else ""))

    model = EmbeddingModel.from_setting("auto", device="cpu")
    qvecs = model.embed_queries([q["question"] for q in questions])
    results: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    answerable: dict[str, int] = {}
    per_question: dict[str, list[dict]] = {}
    for variant in ("pypdf", "tables"):
        chunks = parsed[variant]
        vectors = model.embed_documents([c.text for c in chunks])
        lexical = LexicalIndex([c.text for c in chunks], k1=BM25_K1, b=BM25_B)
        answerable[variant] = sum(any(is_hit(c, q) for c in chunks) for q in questions)
        for q, qvec in zip(questions, qvecs):
            ranked = rankings(chunks, vectors, lexical, q["question"], qvec)
            row = {"question": q["question"]}
            for mode, order in ranked.items():
                s = score(chunks, order, q)
                results.setdefault((variant, mode), []).append(s)
                row[mode] = round(1 / s[2]) if s[2] else None
            per_question.setdefault(variant, []).append(row)

    pypdf_spp = parsed["pypdf_s"] / pages
    tables_spp = (parsed["pypdf_s"] + parsed["plumber_s"]) / pages
    print()
    print(
        "Hit: a chunk from the question's file+page with one line holding both the answer cell's exact text "
        "(not inside a longer number) and the row label."
    )
    print()
    print("| variant | mode | hit@1 | hit@5 | MRR@10 | answerable | parse s/page |")
    print("|---|---|---|---|---|---|---|")
    for variant, spp in (("pypdf", pypdf_spp), ("tables", tables_spp)):
        for mode in ("dense", "bm25", "hybrid"):
            scores = results[(variant, mode)]
            n = len(scores)
            h1, h5, mrr = (sum(s[0] for s in scores) / n, sum(s[1] for s in scores) / n, sum(s[2] for s in scores) / n)
            print(f"| {variant} | {mode} | {h1:.3f} | {h5:.3f} | {mrr:.3f} | {answerable[variant]}/{n} | {spp:.3f} |")
    print()
    plumber_gated = parsed["plumber_s"] / parsed["gated"] if parsed["gated"] else 0.0
    print(
        f"parse seconds per page over all {pages} pages: pypdf {pypdf_spp:.3f}, pypdf + pdfplumber on gated pages "
        f"{tables_spp:.3f}; pdfplumber alone {plumber_gated:.3f} s per page it ran on"
    )
    if args.verbose:
        print()
        print("| question | " + " | ".join(f"{v} {m}" for v in ("pypdf", "tables") for m in ("dense", "bm25", "hybrid")) + " |")
        print("|---|" + "---|" * 6)
        for a, b in zip(per_question["pypdf"], per_question["tables"]):
            cells = [str(r[m] or "-") for r in (a, b) for m in ("dense", "bm25", "hybrid")]
            print(f"| {a['question'][:70]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
