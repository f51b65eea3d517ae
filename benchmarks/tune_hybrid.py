"""Tune hybrid fusion on a BEIR train/dev split (never test), on an index built by beir_eval.py.

Dense and BM25 rankings are computed once per query with the service's own components, then
every (rrf_k, lexical_weight, fetch_k) combination is fused offline and scored by nDCG@10.

    python benchmarks/tune_hybrid.py --dataset ../shared/data/beir/scifact --split train
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from beir_eval import doc_filename, load_qrels, ndcg_at_k  # noqa: E402

from rag_core.embedding import load_for_spec  # noqa: E402
from rag_core.index_store import VersionedIndex  # noqa: E402
from rag_core.settings import load_settings  # noqa: E402
from serve_app.retrieval import HybridRetriever, convex_fusion, reciprocal_rank_fusion  # noqa: E402
from serve_app.retrieval_request import RetrievalRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="train", choices=["train", "dev"])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--max-queries", type=int, default=400)
    parser.add_argument("--bm25-grid", action="store_true", help="also tune BM25 k1 and b (rebuilds the lexical index)")
    args = parser.parse_args()
    dataset = args.dataset.resolve()
    workdir = (args.workdir or Path.home() / ".cache" / "rag-eval" / dataset.name).resolve()
    settings = load_settings(index_dir=workdir / "index")
    index = VersionedIndex.from_settings(settings)
    retriever = HybridRetriever(index, settings.retrieval)
    assert retriever.maybe_reload(), retriever.last_error
    model = load_for_spec(index.current_info().model_spec)
    names = {doc_filename(json.loads(line)["_id"]): json.loads(line)["_id"] for line in (dataset / "corpus.jsonl").open()}

    qrels = load_qrels(dataset / "qrels" / f"{args.split}.tsv")
    queries = {}
    for line in (dataset / "queries.jsonl").open():
        query = json.loads(line)
        if query["_id"] in qrels and len(queries) < args.max_queries:
            queries[query["_id"]] = query["text"]
    vectors = dict(zip(queries, model.embed_queries(list(queries.values()))))
    depth = 200
    dense, lexical, dense_scored, lexical_scored = {}, {}, {}, {}
    for query_id, text in queries.items():
        dense_scored[query_id] = [
            (c.chunk_id, c.score)
            for c in retriever.retrieve(
                RetrievalRequest.resolve(retriever.settings, query=text, vector=vectors[query_id], top_k=depth, mode="dense")
            )[0]
        ]
        lexical_scored[query_id] = [
            (c.chunk_id, c.score)
            for c in retriever.retrieve(RetrievalRequest.resolve(retriever.settings, query=text, top_k=depth, mode="lexical"))[0]
        ]
        dense[query_id] = [cid for cid, _ in dense_scored[query_id]]
        lexical[query_id] = [cid for cid, _ in lexical_scored[query_id]]
    snapshot = retriever.snapshot
    file_of = {cid: snapshot.metadatas[pos]["file"] for cid, pos in snapshot.positions.items()}

    def score(rankings: dict[str, list[str]]) -> float:
        total = 0.0
        for query_id, ranked_chunks in rankings.items():
            docs: list[str] = []
            for chunk_id in ranked_chunks:
                doc = names[file_of[chunk_id]]
                if doc not in docs:
                    docs.append(doc)
            total += ndcg_at_k(docs, qrels[query_id])
        return round(100 * total / len(rankings), 2)

    print(f"{args.split}: {len(queries)} queries; dense {score(dense)}  lexical {score(lexical)}")
    if args.bm25_grid:
        from rag_core.contextual import version_indexed_texts
        from serve_app.retrieval import LexicalIndex

        contextual = bool(snapshot.info.chunking.get("contextual"))
        texts = version_indexed_texts(snapshot.texts, snapshot.metadatas, contextual=contextual)
        for k1, b in itertools.product([0.6, 0.9, 1.2, 1.5], [0.3, 0.5, 0.75, 0.9]):
            lexical_index = LexicalIndex(texts, k1, b, settings.retrieval.bm25_stemmer)
            scored = {q: [(snapshot.chunk_ids[p], v) for p, v in lexical_index.top(t, depth)] for q, t in queries.items()}
            fused = {q: [cid for cid, _ in convex_fusion([(dense_scored[q][:100], 0.6), (scored[q][:100], 0.4)])] for q in queries}
            print(
                f"bm25 k1={k1} b={b}: lexical {score({q: [c for c, _ in v] for q, v in scored.items()})}  convex hybrid {score(fused)}",
                flush=True,
            )
    results = []
    for rrf_k, lexical_weight, fetch_k in itertools.product([5, 10, 20, 40, 60, 100], [0.5, 0.75, 1.0, 1.25, 1.5, 2.0], [20, 50, 100, 200]):
        fused = {
            q: [cid for cid, _ in reciprocal_rank_fusion([(dense[q][:fetch_k], 1.0), (lexical[q][:fetch_k], lexical_weight)], rrf_k)]
            for q in queries
        }
        results.append((score(fused), rrf_k, lexical_weight, fetch_k))
    results.sort(reverse=True)
    for ndcg, rrf_k, lexical_weight, fetch_k in results[:10]:
        print(f"hybrid nDCG@10 {ndcg}  rrf_k={rrf_k} lexical_weight={lexical_weight} fetch_k={fetch_k}")
    default = next(r for r in results if (r[1], r[2], r[3]) == (60, 1.0, 50))
    print(f"rrf default (rrf_k=60, lexical_weight=1.0, fetch_k=50): {default[0]}")
    convex = []
    for lexical_weight, fetch_k in itertools.product([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [20, 50, 100, 200]):
        fused = {
            q: [
                cid
                for cid, _ in convex_fusion(
                    [(dense_scored[q][:fetch_k], 1 - lexical_weight), (lexical_scored[q][:fetch_k], lexical_weight)]
                )
            ]
            for q in queries
        }
        convex.append((score(fused), lexical_weight, fetch_k))
    convex.sort(reverse=True)
    for ndcg, lexical_weight, fetch_k in convex[:8]:
        print(f"convex nDCG@10 {ndcg}  lexical_weight={lexical_weight} fetch_k={fetch_k}")


if __name__ == "__main__":
    main()
