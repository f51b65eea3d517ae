"""Retrieval-quality regression guard: SciFact and NFCorpus (BEIR test splits) and the SQuAD 2.0
dev questions of ../shared/data/qa, each through the real pipeline (the ingest job, then the Serve
app's /v1/retrieve over HTTP with its shipped defaults), compared with a committed baseline.

    python -m benchmarks.quality_guard                       # all three, compared with the baseline
    python -m benchmarks.quality_guard --datasets squad      # one of them
    python -m benchmarks.quality_guard --write-baseline      # record the current figures as the baseline

Read as an outside harness reads the API: each query asks /v1/retrieve for 30 chunks with no other
option, and documents are ranked by their first appearance among them. BEIR: nDCG@10, recall@10.
SQuAD (answerable questions only, 2,910; one file per paragraph): hit@1 and hit@5 of the question's
own paragraph. Latency: the median of 200 queries sent one at a time.

A metric more than --tolerance points (default 0.5) below the baseline prints a REGRESSION line and
the run exits 1; a p50 more than 10% above the baseline's prints a SLOWER line (reported, not
failed: latency on a shared machine is noisy, so compare it side by side before acting on it).
Indexes are kept in ~/.cache/rag-eval/<dataset> and re-runs only query (the ingest is incremental).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.beir_eval import (
    REPO_ROOT,
    documents_from_chunks,
    evaluate,
    ingest,
    load_qrels,
    load_queries,
    run_queries,
    squad_questions,
    start_serve,
    wait_healthy,
    write_corpus,
)

DATA = REPO_ROOT.parent / "shared" / "data"
BEIR = {"scifact": DATA / "beir" / "scifact", "nfcorpus": DATA / "beir" / "nfcorpus"}
SQUAD = DATA / "qa" / "squad2_dev_cs224n"
BASELINE = REPO_ROOT / "benchmarks" / "results" / "quality_baseline.json"
TOP_K_CHUNKS = 30
LATENCY_QUERIES = 200
SERVE_URL = "http://127.0.0.1:8000"  # Serve's HTTP port


def median_latency_ms(url: str, queries: list[str]) -> float:
    """One query at a time, as a user's single request sees it."""
    timings = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in queries:
            started = time.perf_counter()
            client.post("/v1/retrieve", json={"query": text, "top_k": TOP_K_CHUNKS}).raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 1)


def measure(name: str, workdir: Path) -> dict[str, Any]:
    if name == "squad":
        names = write_corpus(SQUAD, workdir / "corpus", "contexts.jsonl")  # SQuAD's paragraphs, BEIR-style
        queries, paragraph_of = squad_questions(SQUAD)
    else:
        names = write_corpus(BEIR[name], workdir / "corpus")
        qrels = load_qrels(BEIR[name] / "qrels" / "test.tsv")
        queries = load_queries(BEIR[name], qrels)
    index_dir = workdir / "index"
    started = time.monotonic()
    summary = ingest(workdir / "corpus", index_dir)
    print(f"{name}: ingest {summary['chunks_total']} chunks, {time.monotonic() - started:.0f} s, {summary['index_version']}", flush=True)

    server = start_serve(index_dir, [])
    try:
        wait_healthy(SERVE_URL)
        results = asyncio.run(run_queries(SERVE_URL, queries, {}, TOP_K_CHUNKS))
        if name == "squad":
            ranked = {q: documents_from_chunks(results.get(q, []), names) for q in queries}
            hit1 = sum(ranked[q][:1] == [paragraph_of[q]] for q in queries)
            hit5 = sum(paragraph_of[q] in ranked[q][:5] for q in queries)
            metrics = {"hit@1": round(100 * hit1 / len(queries), 2), "hit@5": round(100 * hit5 / len(queries), 2)}
        else:
            scores = evaluate(results, qrels, names)
            metrics = {"ndcg@10": scores["ndcg@10"], "recall@10": scores["recall@10"]}
        metrics["p50_ms"] = median_latency_ms(SERVE_URL, list(queries.values())[:LATENCY_QUERIES])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    return {"queries": len(queries), "chunks": summary["chunks_total"], **metrics}


def compare(current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]], tolerance: float) -> list[str]:
    """REGRESSION lines for quality lost beyond the tolerance; SLOWER lines for p50 over +10%."""
    problems = []
    for name, figures in current.items():
        before = baseline.get(name)
        if before is None:
            problems.append(f"NO BASELINE for {name}: run with --write-baseline to record one")
            continue
        for metric, value in figures.items():
            if metric in ("queries", "chunks", "p50_ms") or metric not in before:
                continue
            if value < before[metric] - tolerance:
                problems.append(f"REGRESSION {name} {metric}: {value} < baseline {before[metric]} - {tolerance}")
        if "p50_ms" in before and figures["p50_ms"] > 1.10 * before["p50_ms"]:
            problems.append(f"SLOWER {name} p50: {figures['p50_ms']} ms > 1.10 x baseline {before['p50_ms']} ms")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="scifact,nfcorpus,squad")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--tolerance", type=float, default=0.5, help="points of a metric that may be lost")
    parser.add_argument("--write-baseline", action="store_true")
    args = parser.parse_args()

    current = {}
    for name in args.datasets.split(","):
        current[name] = measure(name, Path.home() / ".cache" / "rag-eval" / ("squad2_dev_cs224n" if name == "squad" else name))
        print(json.dumps({name: current[name]}), flush=True)

    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    if args.write_baseline:
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        args.baseline.write_text(json.dumps({**baseline, **current}, indent=2) + "\n")
        print(f"baseline written: {args.baseline}")
        return
    problems = compare(current, baseline, args.tolerance)
    for line in problems:
        print(line)
    if any(line.startswith(("REGRESSION", "NO BASELINE")) for line in problems):
        sys.exit(1)
    print(f"quality holds within {args.tolerance} points of {args.baseline.name}")


if __name__ == "__main__":
    main()
