"""The packaged all-MiniLM-L6-v2 on torch, ONNX Runtime fp32 and ONNX Runtime int8, side by side in
one process, measured interleaved (every round runs each configuration once, in a rotating order)
so that the shared machine's noise falls on all of them alike; medians are reported.

    flock /tmp/cpu.lock python benchmarks/embedding_backends.py [--out benchmarks/results/embedding_backends.md]

1. First load: the ONNX export and the int8 quantization into an empty cache, then a warm load.
2. Agreement: cosine of each backend's vectors with torch's, on queries and document chunks.
3. Query latency: one question of 15-25 words per call (SciFact claims, NFCorpus queries and SQuAD
   questions of that length), torch / onnx / onnx-int8 with 1 and 2 threads.
4. Document throughput: batches of 64, chunks/s, on 200-500-word SciFact documents (cut at the
   model's 256 tokens) and on 512-character chunks (the default chunking), 1 and 2 threads.
5. Dense retrieval nDCG@10 on the SciFact and NFCorpus test splits, per backend: the documents are
   written and chunked as benchmarks/beir_eval.py feeds them to the ingest job (title, blank line,
   text; 512/64 recursive chunking), ranked by exact cosine over all chunks (a document ranks by
   its best chunk, beir_eval's `documents_from_chunks` and `evaluate`). Mixed rows (documents of one
   backend, queries of another) show what querying an index with another backend would cost.
   PII redaction, which the job applies, is left out: it is the same for every backend. The same
   numbers through the real job and Serve app: `beir_eval.py --backend onnx-int8 --strategies dense`.

Chunk embeddings are kept in --cache (a re-run only embeds what is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.beir_eval import evaluate, load_qrels  # noqa: E402
from rag_core.chunking import RecursiveChunker  # noqa: E402
from rag_core.embedding import (  # noqa: E402
    BACKEND_ONNX,
    BACKEND_ONNX_INT8,
    BACKEND_TORCH,
    BACKENDS,
    PACKAGED_MINILM,
    SOURCE_PACKAGE,
    EmbeddingModel,
    EmbeddingModelSpec,
)
from rag_core.parsing.text import parse_plain  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
SPEC = EmbeddingModelSpec(PACKAGED_MINILM, SOURCE_PACKAGE, 384, "")
THREADS = (1, 2)


def questions(count: int, seed: int = 13) -> list[str]:
    """Single realistic questions of 15-25 words from three sources."""
    found: list[str] = []
    for path, key in [
        (DATA / "beir/scifact/queries.jsonl", "text"),
        (DATA / "beir/nfcorpus/queries.jsonl", "text"),
        (DATA / "qa/squad2_dev_cs224n/questions.jsonl", "question"),
    ]:
        with path.open() as handle:
            found += [q for q in (json.loads(line)[key] for line in handle) if 15 <= len(q.split()) <= 25]
    random.Random(seed).shuffle(found)
    return found[:count]


def scifact_texts(min_words: int, max_words: int) -> list[str]:
    with (DATA / "beir/scifact/corpus.jsonl").open() as handle:
        docs = [json.loads(line) for line in handle]
    texts = [f"{d['title'].strip()}\n\n{d['text'].strip()}" for d in docs]
    return [t for t in texts if min_words <= len(t.split()) <= max_words]


def chunk_dataset(dataset: Path, max_docs: int | None = None) -> tuple[list[str], list[str]]:
    """(chunk texts, document id of each chunk), as the ingest job chunks beir_eval's files."""
    chunker = RecursiveChunker(512, 64)
    texts, owners = [], []
    with (dataset / "corpus.jsonl").open() as handle:
        for number, line in enumerate(handle):
            if max_docs is not None and number >= max_docs:
                break
            doc = json.loads(line)
            body = f"{doc.get('title', '').strip()}\n\n{doc['text'].strip()}\n"
            for chunk in chunker.chunk_segments(parse_plain(body.encode()).segments):
                texts.append(chunk.text)
                owners.append(doc["_id"])
    return texts, owners


class Runner:
    """One loaded model per (backend, threads); torch shares one model and switches its threads."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch_model = EmbeddingModel(SPEC, "cpu")
        self.models = {(BACKEND_TORCH, t): torch_model for t in THREADS}
        for backend in (BACKEND_ONNX, BACKEND_ONNX_INT8):
            for t in THREADS:
                self.models[(backend, t)] = EmbeddingModel(replace(SPEC, backend=backend), "cpu", t)

    def model(self, backend: str, threads: int) -> EmbeddingModel:
        if backend == BACKEND_TORCH:
            self.torch.set_num_threads(threads)
        return self.models[(backend, threads)]


def interleaved(configs: list[tuple[str, int]], rounds: int, call) -> dict[tuple[str, int], list[float]]:
    """Seconds per call for each configuration; each round runs every configuration once, in an order
    rotated by one each round."""
    timings: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        shift = r % len(configs)
        for config in configs[shift:] + configs[:shift]:
            started = time.perf_counter()
            call(config, r)
            timings[config].append(time.perf_counter() - started)
    return timings


def load_times() -> list[str]:
    """Export + quantize into an empty cache, then a warm load, in a fresh cache folder."""
    lines = ["| backend | first load in the process (onnx: export into an empty cache) | later loads (cached) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("RAG_ONNX_CACHE_DIR")
        os.environ["RAG_ONNX_CACHE_DIR"] = cache
        try:
            for backend in BACKENDS:
                started = time.perf_counter()
                EmbeddingModel(replace(SPEC, backend=backend), "cpu", 2)
                first = time.perf_counter() - started
                started = time.perf_counter()
                EmbeddingModel(replace(SPEC, backend=backend), "cpu", 2)
                warm = time.perf_counter() - started
                lines.append(f"| {backend} | {first:.1f} s | {warm:.1f} s |")
        finally:
            if previous is None:
                os.environ.pop("RAG_ONNX_CACHE_DIR", None)
            else:
                os.environ["RAG_ONNX_CACHE_DIR"] = previous
    return lines


def agreement(runner: Runner, queries: list[str], chunks: list[str]) -> list[str]:
    lines = ["| backend | queries: min / median cosine with torch | chunks: min / median cosine with torch |", "|---|---|---|"]
    reference_q = runner.model(BACKEND_TORCH, 2).embed_queries(queries)
    reference_c = runner.model(BACKEND_TORCH, 2).embed_documents(chunks)
    for backend in (BACKEND_ONNX, BACKEND_ONNX_INT8):
        model = runner.model(backend, 2)
        cq = np.sum(model.embed_queries(queries) * reference_q, axis=1)
        cc = np.sum(model.embed_documents(chunks) * reference_c, axis=1)
        lines.append(f"| {backend} | {cq.min():.5f} / {np.median(cq):.5f} | {cc.min():.5f} / {np.median(cc):.5f} |")
    return lines


def latency(runner: Runner, queries: list[str], rounds: int) -> tuple[list[str], dict]:
    configs = [(b, t) for t in THREADS for b in BACKENDS]
    for config in configs:  # warm-up: first calls allocate
        for q in queries[:10]:
            runner.model(*config).embed_queries([q])
    timings = interleaved(configs, rounds, lambda config, r: runner.model(*config).embed_queries([queries[r % len(queries)]]))
    lines = ["| backend | threads | median ms | p90 ms | vs torch (same threads) |", "|---|---|---|---|---|"]
    medians = {c: statistics.median(v) * 1000 for c, v in timings.items()}
    for backend, threads in configs:
        values = sorted(timings[(backend, threads)])
        p90 = values[int(0.9 * (len(values) - 1))] * 1000
        speedup = medians[(BACKEND_TORCH, threads)] / medians[(backend, threads)]
        lines.append(f"| {backend} | {threads} | {medians[(backend, threads)]:.2f} | {p90:.2f} | {speedup:.2f}x |")
    return lines, medians


def throughput(runner: Runner, label: str, texts: list[str], rounds: int, batch: int = 64) -> tuple[list[str], dict]:
    configs = [(b, t) for t in THREADS for b in BACKENDS]
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    for config in configs:
        runner.model(*config).embed_documents(batches[0][:8], batch)
    timings = interleaved(configs, rounds, lambda config, r: runner.model(*config).embed_documents(batches[r % len(batches)], batch))
    rates = {c: statistics.median(batch / s for s in v) for c, v in timings.items()}
    lines = []
    for backend, threads in configs:
        speedup = rates[(backend, threads)] / rates[(BACKEND_TORCH, threads)]
        lines.append(f"| {label} | {backend} | {threads} | {rates[(backend, threads)]:.1f} | {speedup:.2f}x |")
    return lines, rates


def embed_cached(runner: Runner, backend: str, texts: list[str], path: Path) -> np.ndarray:
    if path.exists():
        vectors = np.load(path)
        if vectors.shape[0] == len(texts):
            return vectors
    started = time.perf_counter()
    vectors = runner.model(backend, 2).embed_documents(texts, 64)
    print(f"  {path.name}: {len(texts)} chunks in {time.perf_counter() - started:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def retrieval(
    runner: Runner, dataset: Path, cache: Path, max_docs: int | None = None, doc_backends: Sequence[str] = BACKENDS, top_chunks: int = 50
) -> tuple[list[str], dict]:
    chunks, owners = chunk_dataset(dataset, max_docs)
    qrels = load_qrels(dataset / "qrels" / "test.tsv")
    with (dataset / "queries.jsonl").open() as handle:
        queries = {q["_id"]: q["text"] for q in map(json.loads, handle) if q["_id"] in qrels}
    ids = list(queries)
    print(f"{dataset.name}: {len(chunks)} chunks, {len(ids)} test queries", flush=True)
    # int8 before fp32 onnx: torch and onnx vectors agree to 1e-5, int8's are the ones in question.
    order = [b for b in (BACKEND_TORCH, BACKEND_ONNX_INT8, BACKEND_ONNX) if b in doc_backends]
    docs = {b: embed_cached(runner, b, chunks, cache / f"{dataset.name}-{b}.npy") for b in order}
    query_vectors = {b: runner.model(b, 2).embed_queries([queries[i] for i in ids]) for b in BACKENDS}
    names = {doc: doc for doc in set(owners)}  # evaluate() maps a result's "file" to a document id

    def score(doc_backend: str, query_backend: str) -> dict[str, float]:
        similarities = query_vectors[query_backend] @ docs[doc_backend].T
        top = np.argsort(-similarities, axis=1)[:, :top_chunks]
        results = {qid: [{"file": owners[j]} for j in top[row]] for row, qid in enumerate(ids)}
        return evaluate(results, qrels, names)

    rows = {}
    pairs = [(b, b) for b in BACKENDS] + [
        (BACKEND_TORCH, BACKEND_ONNX),
        (BACKEND_TORCH, BACKEND_ONNX_INT8),
        (BACKEND_ONNX_INT8, BACKEND_TORCH),
    ]
    for doc_backend, query_backend in pairs:
        if doc_backend in docs:
            rows[(doc_backend, query_backend)] = score(doc_backend, query_backend)
    return [f"{len(chunks)} chunks, {len(ids)} queries"], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    parser.add_argument("--latency-rounds", type=int, default=400)
    parser.add_argument("--throughput-rounds", type=int, default=6)
    parser.add_argument("--datasets", default="scifact,nfcorpus", help="BEIR folders under shared/data/beir ('' = skip nDCG)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "rag-eval" / "embedding-backends")
    parser.add_argument("--max-docs", type=int, help="smoke test only: the first N documents of each corpus")
    parser.add_argument("--only-retrieval", action="store_true", help="skip loading, agreement, latency and throughput")
    parser.add_argument("--doc-backends", default=",".join(BACKENDS), help="backends whose chunk embeddings are computed (nDCG)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    started = time.monotonic()
    out = [
        "# Embedding backends: torch vs ONNX Runtime fp32 vs int8 (packaged all-MiniLM-L6-v2)",
        "",
        f"`python benchmarks/embedding_backends.py`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores "
        f"({_cpu_name()}), one process, configurations interleaved; medians.",
    ]
    if args.only_retrieval:
        _retrieval_section(Runner(), args, out, started)
        return
    out += ["", "## Loading", "", *load_times()]
    print("\n".join(out), flush=True)
    runner = Runner()
    qs = questions(300)
    long_docs = scifact_texts(200, 500)
    sci_chunks, _ = chunk_dataset(DATA / "beir" / "scifact")
    section = ["", "## Agreement with torch (cosine of normalized vectors)", "", *agreement(runner, qs, sci_chunks[:512])]
    print("\n".join(section), flush=True)
    out += section

    lines, _ = latency(runner, qs, args.latency_rounds)
    title = f"## Query latency: one question of 15-25 words per call ({len(qs)} questions, {args.latency_rounds} rounds)"
    section = ["", title, "", *lines]
    print("\n".join(section), flush=True)
    out += section

    section = [
        "",
        f"## Document throughput: batches of 64, median of {args.throughput_rounds} rounds",
        "",
        "| chunks | backend | threads | chunks/s | vs torch |",
        "|---|---|---|---|---|",
    ]
    lines, _ = throughput(runner, "200-500 words (cut at 256 tokens)", long_docs, args.throughput_rounds)
    section += lines
    lines, _ = throughput(runner, "512 characters (default chunking)", sci_chunks[::7], args.throughput_rounds)
    section += lines
    print("\n".join(section), flush=True)
    out += section
    _write(args.out, out)
    _retrieval_section(runner, args, out, started)


def _write(path: Path | None, lines: list[str]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


def _retrieval_section(runner: Runner, args: argparse.Namespace, out: list[str], started: float) -> None:
    datasets = [d for d in args.datasets.split(",") if d]
    if datasets:
        table = {}
        notes = []
        for name in datasets:
            note, rows = retrieval(runner, DATA / "beir" / name, args.cache, args.max_docs, args.doc_backends.split(","))
            notes.append(f"{name}: {note[0]}")
            table[name] = rows
            for pair, metrics in rows.items():  # each dataset as soon as it is done
                print(f"  {name} documents {pair[0]}, queries {pair[1]}: {metrics}", flush=True)
        section = [
            "",
            "## Dense retrieval, test splits (nDCG@10 / recall@10 / MRR@10, x100)",
            "",
            "; ".join(notes),
            "",
            "| documents embedded with | queries embedded with | " + " | ".join(f"{n} nDCG@10 | {n} recall@10" for n in datasets) + " |",
            "|---|---|" + "---|---|" * len(datasets),
        ]
        for pair in table[datasets[0]]:
            cells = " | ".join(
                f"{table[n][pair]['ndcg@10']:.2f} | {table[n][pair]['recall@10']:.2f}" if pair in table[n] else "not run | not run"
                for n in datasets
            )
            section.append(f"| {pair[0]} | {pair[1]} | {cells} |")
        section += ["", "nDCG@10 change vs torch/torch: " + "; ".join(_deltas(table, n) for n in datasets)]
        print("\n".join(section), flush=True)
        out += section
    out += ["", f"Whole run: {time.monotonic() - started:.0f} s."]
    _write(args.out, out)
    print("\n".join(out))


def _deltas(table: dict, name: str) -> str:
    base = table[name][(BACKEND_TORCH, BACKEND_TORCH)]["ndcg@10"]
    parts = [f"{b} {table[name][(b, b)]['ndcg@10'] - base:+.2f}" for b in (BACKEND_ONNX, BACKEND_ONNX_INT8) if (b, b) in table[name]]
    return f"{name}: " + ", ".join(parts)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
