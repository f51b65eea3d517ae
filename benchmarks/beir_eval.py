"""Retrieval quality on a BEIR dataset through the real pipeline: the corpus is written as text
files, indexed by the ingest job, and every query goes to the Serve app's /v1/retrieve over HTTP.

    python benchmarks/beir_eval.py --dataset ../shared/data/beir/scifact [--split test] [--backend onnx-int8]

Prints nDCG@10, recall@10 and MRR@10 for dense only, hybrid, and hybrid + reranker. Documents are
split into chunks; a document's rank is that of its best chunk. The index is kept in --workdir
(default ~/.cache/rag-eval/<dataset>), so a re-run only queries: ingest is incremental.
--backend sets the embedding backend (RAG_EMBEDDING_BACKEND) for the ingest job and the Serve app;
each backend other than torch gets its own index (index-<backend>) so its documents are embedded by it.
Tune on train/dev splits; report test.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "dense": {"mode": "dense", "rerank": False},
    "hybrid": {"mode": "hybrid", "rerank": False},
    "hybrid+rerank": {"mode": "hybrid", "rerank": True},
}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def load_queries(dataset: Path, qrels: dict[str, dict[str, int]]) -> dict[str, str]:
    """query id -> text, for the queries that have judgments in `qrels`."""
    queries = {}
    with (dataset / "queries.jsonl").open() as handle:
        for line in handle:
            query = json.loads(line)
            if query["_id"] in qrels:
                queries[query["_id"]] = query["text"]
    return queries


def squad_questions(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(question id -> question, question id -> its paragraph id) of a SQuAD folder's
    questions.jsonl, answerable questions only."""
    questions, paragraphs = {}, {}
    with (folder / "questions.jsonl").open() as handle:
        for line in handle:
            question = json.loads(line)
            if not question["is_impossible"]:
                questions[question["id"]] = question["question"]
                paragraphs[question["id"]] = question["context_id"]
    return questions, paragraphs


def doc_filename(doc_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", doc_id) + ".txt"


def write_corpus(dataset: Path, target: Path, corpus_file: str = "corpus.jsonl") -> dict[str, str]:
    """One text file per document (title, blank line, text); returns file name -> doc id."""
    target.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    with (dataset / corpus_file).open() as handle:
        for line in handle:
            doc = json.loads(line)
            name = doc_filename(doc["_id"])
            names[name] = doc["_id"]
            body = f"{doc.get('title', '').strip()}\n\n{doc['text'].strip()}\n"
            path = target / name
            if not path.exists() or path.read_text() != body:
                path.write_text(body)
    return names


def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    # Linear gains, as trec_eval / pytrec_eval (and so BEIR) compute them.
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if doc in relevant:
            return 1.0 / (i + 1)
    return 0.0


def documents_from_chunks(results: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    ranked: list[str] = []
    for result in results:
        doc = names.get(result["file"])
        if doc is not None and doc not in ranked:
            ranked.append(doc)
    return ranked


def ingest(corpus_dir: Path, index_dir: Path, backend: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "RAG_INDEX_DIR": str(index_dir), "PYTHONUNBUFFERED": "1", **backend_env(backend)}
    process = subprocess.run(
        [sys.executable, "-m", "ingest_jobs.index", "--source", str(corpus_dir)], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    summary = json.loads(process.stdout.strip().splitlines()[-1])
    if process.returncode != 0:
        raise SystemExit(f"ingest failed: {summary}")
    return summary


async def run_queries(
    url: str, queries: dict[str, str], strategy: dict[str, Any], top_k: int, concurrency: int = 8
) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(query_id: str, text: str) -> None:
            async with semaphore:
                response = await client.post("/v1/retrieve", json={"query": text, "top_k": top_k, **strategy})
                response.raise_for_status()
                results[query_id] = response.json()["results"]

        await asyncio.gather(*(one(q, t) for q, t in queries.items()))
    return results


def evaluate(results: dict[str, list[dict]], qrels: dict[str, dict[str, int]], names: dict[str, str]) -> dict[str, float]:
    scores = {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    for query_id, relevant in qrels.items():
        ranked = documents_from_chunks(results.get(query_id, []), names)
        scores["ndcg@10"] += ndcg_at_k(ranked, relevant)
        scores["recall@10"] += recall_at_k(ranked, relevant)
        scores["mrr@10"] += mrr_at_k(ranked, relevant)
    return {name: round(100 * total / len(qrels), 2) for name, total in scores.items()}


def backend_env(backend: str | None) -> dict[str, str]:
    return {} if backend is None else {"RAG_EMBEDDING_BACKEND": backend}


def start_serve(index_dir: Path, overrides: list[str], backend: str | None = None) -> subprocess.Popen:
    # Thousands of queries from one client: the per-caller rate limit is off for the benchmark.
    env = {**os.environ, "RAG_INDEX_DIR": str(index_dir), "RAG_AUTH__RATE_LIMIT_ENABLED": "false", **backend_env(backend)}
    args = ["serve", "run", "serve_app.app:build_app", "config=configs/rag.yaml", *overrides]
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return process


def recorded_backend(index_dir: Path) -> str:
    """The embedding backend the index's current version was built with (what its queries use)."""
    sys.path.insert(0, str(REPO_ROOT))
    from rag_core.index_store import VersionedIndex
    from rag_core.settings import load_settings

    info = VersionedIndex.from_settings(load_settings(index_dir=index_dir)).current_info()
    return info.model_spec.backend if info else "-"


def wait_healthy(url: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"service at {url} not healthy after {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--url", help="an already running service (else `serve run` is started here)")
    parser.add_argument("--top-k-chunks", type=int, default=50, help="chunks requested per query (>= 10 documents)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--ingest-only", action="store_true")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra build_app key=value (e.g. retrieval.rrf_k=20)")
    parser.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], help="embedding backend for ingest and serve (default: the settings')"
    )
    args = parser.parse_args()

    dataset = args.dataset.resolve()
    workdir = (args.workdir or Path.home() / ".cache" / "rag-eval" / dataset.name).resolve()
    index_dir = workdir / ("index" if args.backend in (None, "torch") else f"index-{args.backend}")
    names = write_corpus(dataset, workdir / "corpus")
    started = time.monotonic()
    summary = ingest(workdir / "corpus", index_dir, args.backend)
    print(
        f"ingest: {summary['files_indexed']} indexed, {summary['files_unchanged']} unchanged, {summary['chunks_total']} chunks, "
        f"{len(summary['files_failed'])} failed, {time.monotonic() - started:.0f} s, version {summary['index_version']}, "
        f"backend {recorded_backend(index_dir)}",
        flush=True,
    )
    if args.ingest_only:
        return

    qrels = load_qrels(dataset / "qrels" / f"{args.split}.tsv")
    queries = load_queries(dataset, qrels)

    server = None
    url = args.url
    if url is None:
        url = "http://127.0.0.1:8000"  # Serve's HTTP port
        server = start_serve(index_dir, args.serve_arg, args.backend)
    try:
        health = wait_healthy(url)
        rows = []
        for name in args.strategies.split(","):
            started = time.monotonic()
            results = asyncio.run(run_queries(url, queries, STRATEGIES[name], args.top_k_chunks))
            metrics = evaluate(results, qrels, names)
            reranker = "-" if not STRATEGIES[name]["rerank"] else health["reranker"]
            rows.append(
                {
                    "dataset": dataset.name,
                    "split": args.split,
                    "strategy": name,
                    "backend": recorded_backend(index_dir),
                    "queries": len(queries),
                    "reranker": reranker,
                    **metrics,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        print("\n| dataset | split | strategy | backend | nDCG@10 | recall@10 | MRR@10 | reranker |\n|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['dataset']} | {row['split']} ({row['queries']} q) | {row['strategy']} | {row['backend']} | "
                f"{row['ndcg@10']} | {row['recall@10']} | {row['mrr@10']} | {row['reranker']} |"
            )
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
