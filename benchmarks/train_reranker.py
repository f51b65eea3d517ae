"""A cross-encoder trained here, offline, and measured as the opt-in reranker (`rerank: true`).

    python -m benchmarks.train_reranker train --out ~/.cache/rag-eval/reranker/minilm-l6-beir-train
    python -m benchmarks.train_reranker eval --model ~/.cache/rag-eval/reranker/minilm-l6-beir-train \\
        --dataset ../shared/data/beir/nfcorpus --split dev

No cross-encoder weights and no MS MARCO-style training set can be obtained here (no Hub, no dataset
downloads), so the only judgments to learn from are the BEIR training splits: SciFact train (809
queries) and NFCorpus train (2,590). The model starts from the packaged all-MiniLM-L6-v2 encoder
with a new one-logit head. Each training group is one judged-relevant chunk and `--negatives`
chunks of unjudged documents taken from the shipped hybrid retrieval's own top 30 for that query
(the candidates the reranker will be shown), trained with a softmax over the group (localised
contrastive estimation). The model folder's training.json lists the queries trained on;
`eval --split train --held-out` measures on the rest of that split. The defaults (600 queries of
each split, one epoch) are what 2 CPU cores train in about 13 minutes. Dev and test queries are
never seen in training; `--split test` reports once, after the choice on NFCorpus dev.

`eval` reranks the shipped pipeline's top 30 chunks (plain chunk text, dense search exact, as in
benchmarks.retrieval_ablation) with the model through the service's own `Reranker`, reads documents
by first appearance, and reports nDCG@10 beside the same queries without reranking, and the
reranker's median time per query on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.retrieval_ablation import (
    TOP_CHUNKS,
    Corpus,
    cached_vectors,
    dense_top,
    evaluate,
    load_corpus,
    load_judged_queries,
    ranked_docs,
)
from rag_core.chunking import RecursiveChunker
from rag_core.embedding import EmbeddingModel, packaged_minilm_path
from rag_core.index_reader import RetrievedChunk
from rag_core.settings import RAGSettings, RetrievalSettings
from serve_app.document_ranking import min_max_scaled
from serve_app.reranking import Reranker
from serve_app.retrieval import LexicalIndex, convex_fusion

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir"
TRAINING_SPLITS = (("scifact", "train"), ("nfcorpus", "train"))


@dataclass
class ShippedRetrieval:
    """The service's hybrid retrieval over one BEIR corpus with its shipped settings (plain chunk
    text, convex fusion with the query-length weights), dense search exact."""

    corpus: Corpus
    vectors: np.ndarray
    lexical: LexicalIndex
    settings: RetrievalSettings

    @classmethod
    def build(cls, dataset: Path, model: EmbeddingModel) -> ShippedRetrieval:
        settings = RAGSettings()
        corpus = load_corpus(dataset, RecursiveChunker(settings.chunking.chunk_size, settings.chunking.chunk_overlap))
        retrieval = settings.retrieval
        vectors = cached_vectors(model, corpus.texts, f"{dataset.name}-plain")
        return cls(corpus, vectors, LexicalIndex(corpus.texts, retrieval.bm25_k1, retrieval.bm25_b, retrieval.bm25_stemmer), retrieval)

    def top_scored(self, query: str, vector: np.ndarray, k: int = TOP_CHUNKS) -> list[tuple[int, float]]:
        """The top k chunks' positions and fused scores."""
        dense_weight, lexical_weight = self.settings.fusion_weights(query)
        dense = [(str(i), s) for i, s in dense_top(self.vectors, vector, self.settings.fetch_k)]
        lexical = [(str(i), s) for i, s in self.lexical.top(query, self.settings.fetch_k)]
        fused = convex_fusion([(dense, dense_weight), (lexical, lexical_weight)])[:k]
        return [(int(position), float(score)) for position, score in fused]

    def top_chunks(self, query: str, vector: np.ndarray, k: int = TOP_CHUNKS) -> list[int]:
        return [position for position, _ in self.top_scored(query, vector, k)]


def training_groups(
    retrieval: ShippedRetrieval,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    query_vectors: dict[str, np.ndarray],
    *,
    negatives: int,
    positives_per_query: int,
    rng: random.Random,
) -> list[tuple[str, int, list[int]]]:
    """(query, positive chunk, negative chunks) groups. Positives are retrieved chunks of judged
    documents, or the first chunk of a judged document retrieval missed; negatives are retrieved
    chunks of documents with no judgment for the query."""
    first_chunk: dict[str, int] = {}
    for position, doc in enumerate(retrieval.corpus.chunk_doc):
        first_chunk.setdefault(doc, position)
    groups = []
    for qid, text in queries.items():
        relevant = qrels[qid]
        top = retrieval.top_chunks(text, query_vectors[qid])
        hard = [p for p in top if retrieval.corpus.chunk_doc[p] not in relevant]
        if not hard:
            continue
        positives = [p for p in top if retrieval.corpus.chunk_doc[p] in relevant]
        missed = [first_chunk[doc] for doc in relevant if doc in first_chunk and first_chunk[doc] not in positives]
        rng.shuffle(missed)
        chosen = (positives + missed)[:positives_per_query]
        for positive in chosen:
            sampled = rng.sample(hard, min(negatives, len(hard)))
            while len(sampled) < negatives:  # a query whose top 30 is mostly judged: repeat hard ones
                sampled.append(rng.choice(hard))
            groups.append((text, positive, sampled))
    return groups


def sampled_queries(queries: dict[str, str], max_queries: int, rng: random.Random) -> dict[str, str]:
    if max_queries and len(queries) > max_queries:
        return dict(rng.sample(sorted(queries.items()), max_queries))
    return queries


def train(args: argparse.Namespace) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = EmbeddingModel.from_setting("auto", device="cpu")
    groups: list[tuple[str, list[str]]] = []  # (query, [positive text, negative texts...])
    trained_queries: dict[str, list[str]] = {}  # what `eval --held-out` leaves out
    for name, split in TRAINING_SPLITS:
        dataset = DATA / name
        qrels, queries = load_judged_queries(dataset, split)
        queries = sampled_queries(queries, args.max_queries, rng)
        trained_queries[f"{name} {split}"] = sorted(queries)
        retrieval = ShippedRetrieval.build(dataset, model)
        vectors = dict(zip(queries, model.embed_queries(list(queries.values()))))
        found = training_groups(
            retrieval, queries, qrels, vectors, negatives=args.negatives, positives_per_query=args.positives_per_query, rng=rng
        )
        texts = retrieval.corpus.texts
        groups += [(query, [texts[positive]] + [texts[n] for n in negative]) for query, positive, negative in found]
        print(f"{name} {split}: {len(queries)} queries, {len(found)} groups", flush=True)
    rng.shuffle(groups)

    cross_encoder = CrossEncoder(packaged_minilm_path(), num_labels=1, device="cpu", max_length=args.max_length)
    network, tokenizer = cross_encoder.model, cross_encoder.tokenizer
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(groups) + args.groups_per_step - 1) // args.groups_per_step)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    group_size = 1 + args.negatives
    started, step = time.monotonic(), 0
    for _epoch in range(args.epochs):
        for start in range(0, len(groups), args.groups_per_step):
            batch = groups[start : start + args.groups_per_step]
            pairs = [(query, text) for query, texts in batch for text in texts]
            features = tokenizer(
                [q for q, _ in pairs],
                [t for _, t in pairs],
                padding=True,
                truncation="only_second",
                max_length=args.max_length,
                return_tensors="pt",
            )
            logits = network(**features).logits.view(len(batch), group_size)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"step {step}/{steps} loss {loss.item():.3f} {time.monotonic() - started:.0f} s", flush=True)
    network.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    cross_encoder.save_pretrained(str(args.out))
    record = {
        "trained_on": trained_queries,
        "groups": len(groups),
        "seconds": round(time.monotonic() - started, 1),
        **{k: v for k, v in vars(args).items() if k not in ("out", "func")},
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)


def evaluate_reranker(args: argparse.Namespace) -> None:
    dataset = args.dataset.resolve()
    qrels, queries = load_judged_queries(dataset, args.split)
    if args.held_out:
        trained_on = json.loads((args.model.expanduser() / "training.json").read_text())["trained_on"]
        if f"{dataset.name} {args.split}" not in trained_on:
            raise SystemExit(f"--held-out: the model was not trained on {dataset.name} {args.split} ({', '.join(trained_on)})")
        trained = set(trained_on[f"{dataset.name} {args.split}"])
        queries = {qid: text for qid, text in queries.items() if qid not in trained}
    model = EmbeddingModel.from_setting("auto", device="cpu")
    retrieval = ShippedRetrieval.build(dataset, model)
    vectors = dict(zip(queries, model.embed_queries(list(queries.values()))))
    reranker = Reranker(str(args.model.expanduser()), threads=os.cpu_count())
    if reranker.is_fallback:
        raise SystemExit(f"{args.model} did not load as a cross-encoder: {reranker.fallback_reason}")
    chunk_doc, texts = retrieval.corpus.chunk_doc, retrieval.corpus.texts
    top = {qid: retrieval.top_scored(text, vectors[qid]) for qid, text in queries.items()}
    cross_scores: dict[str, dict[int, float]] = {}
    timings: list[float] = []
    for qid, text in queries.items():
        chunks = [RetrievedChunk(str(p), chunk_doc[p], 1, texts[p], 0.0) for p, _ in top[qid][: args.candidates]]
        started = time.perf_counter()
        ordered = reranker.rerank(text, chunks, len(chunks))
        timings.append(time.perf_counter() - started)
        cross_scores[qid] = {int(chunk.chunk_id): chunk.score for chunk in ordered}

    def reranked(retrieval_weight: float) -> Callable[[str, str], list[str]]:
        """The candidates by retrieval_weight x min-max(fused) + the rest x min-max(cross-encoder)
        (0: the cross-encoder's order, as `rerank: true` returns it); the rest stay behind."""

        def rank(qid: str, _text: str) -> list[str]:
            candidates = top[qid][: args.candidates]
            fused = min_max_scaled([score for _, score in candidates])
            cross = min_max_scaled([cross_scores[qid][p] for p, _ in candidates])
            combined = [retrieval_weight * f + (1 - retrieval_weight) * c for f, c in zip(fused, cross)]
            order = sorted(range(len(candidates)), key=lambda i: -combined[i])
            positions = [candidates[i][0] for i in order] + [p for p, _ in top[qid][args.candidates :]]
            return ranked_docs([(str(p), 0.0) for p in positions], chunk_doc)

        return rank

    variants: dict[str, Callable[[str, str], list[str]]] = {
        "shipped hybrid, no reranker": lambda qid, text: ranked_docs([(str(p), s) for p, s in top[qid]], chunk_doc),
        f"top {args.candidates} by the cross-encoder (rerank: true)": reranked(0.0),
        **{f"top {args.candidates} by {w} x fused + {1 - w:.1f} x cross-encoder": reranked(w) for w in (0.3, 0.5, 0.7)},
    }
    table: dict[str, object] = {name: evaluate(qrels, queries, rank) for name, rank in variants.items()}
    table["reranker ms per query (median)"] = round(1000 * statistics.median(timings), 1)
    report = {"dataset": dataset.name, "split": args.split, "held_out": args.held_out, "queries": len(queries), "results": table}
    print(json.dumps(report, indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps({**report, "model": str(args.model)}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True)
    training = commands.add_parser("train", help="train on SciFact train and NFCorpus train")
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--negatives", type=int, default=5)
    training.add_argument("--positives-per-query", type=int, default=1)
    training.add_argument("--max-queries", type=int, default=600, help="per training split (0: all)")
    training.add_argument("--groups-per-step", type=int, default=4)
    training.add_argument("--epochs", type=int, default=1)
    training.add_argument("--lr", type=float, default=5e-5)
    training.add_argument("--max-length", type=int, default=160)
    training.add_argument("--seed", type=int, default=13)
    training.set_defaults(func=train)
    evaluation = commands.add_parser("eval", help="rerank the shipped retrieval's top chunks")
    evaluation.add_argument("--model", type=Path, required=True)
    evaluation.add_argument("--dataset", type=Path, required=True)
    evaluation.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    evaluation.add_argument("--candidates", type=int, default=TOP_CHUNKS)
    evaluation.add_argument("--held-out", action="store_true", help="a training split: only the queries training did not sample")
    evaluation.add_argument("--out", type=Path)
    evaluation.set_defaults(func=evaluate_reranker)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.func(args)


if __name__ == "__main__":
    main()
