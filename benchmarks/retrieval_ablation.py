"""Each retrieval technique's separate effect, measured offline on a BEIR train/dev split.

    python -m benchmarks.retrieval_ablation --dataset ../shared/data/beir/scifact --split train
    python -m benchmarks.retrieval_ablation --dataset ../shared/data/beir/nfcorpus --split dev
    python -m benchmarks.retrieval_ablation --dataset ../shared/data/qa/squad2_dev_cs224n --variants RM3,baseline

A SQuAD folder (contexts.jsonl, questions.jsonl) is read as a third corpus: each answerable
question's one relevant document is its own paragraph (hit@1 and hit@5 are reported for every set).

The corpus is written as beir_eval writes it (one text file per document: title, blank line,
text), parsed by the service's own parser and chunked by its chunker with the shipped settings.
Dense and BM25 rankings come from the service's own model and LexicalIndex, fused by its own
convex fusion; documents are ranked by first appearance among the top 30 chunks, as an outside
harness reads /v1/retrieve. Dense search here is exact (Chroma's HNSW is approximate), so figures
are within a few tenths of the pipeline's; use benchmarks.quality_guard for those.

Chunk vectors are cached per variant in ~/.cache/rag-eval/ablation, so only the first run of a
variant embeds. Choose on train/dev; `--split test` only reports, after the choice, what each
technique does on the held-out queries (the README's second table).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.beir_eval import load_qrels, load_queries, ndcg_at_k, recall_at_k, squad_questions
from rag_core.chunking import RecursiveChunker
from rag_core.contextual import indexed_text
from rag_core.embedding import EmbeddingModel
from rag_core.parsing.text import parse_plain
from rag_core.settings import RAGSettings
from serve_app.document_ranking import rank_documents
from serve_app.retrieval import LexicalIndex, convex_fusion

CACHE = Path.home() / ".cache" / "rag-eval" / "ablation"
TOP_CHUNKS = 30


@dataclass
class Corpus:
    chunk_doc: list[str]  # chunk -> BEIR doc id
    texts: list[str]  # stored chunk text
    contextual: list[str]  # chunk text with its document's title in front


def load_corpus(dataset: Path, chunker: RecursiveChunker) -> Corpus:
    chunk_doc, texts, contextual = [], [], []
    corpus_file = "contexts.jsonl" if is_squad(dataset) else "corpus.jsonl"
    with (dataset / corpus_file).open() as handle:
        for line in handle:
            doc = json.loads(line)
            body = f"{doc.get('title', '').strip()}\n\n{doc['text'].strip()}\n"
            parsed = parse_plain(body.encode())
            for chunk in chunker.chunk_segments(parsed.segments):
                chunk_doc.append(doc["_id"])
                texts.append(chunk.text)
                contextual.append(indexed_text(chunk.text, title=parsed.title, heading=chunk.location.heading))
    return Corpus(chunk_doc, texts, contextual)


def is_squad(dataset: Path) -> bool:
    return (dataset / "questions.jsonl").exists()


def load_judged_queries(dataset: Path, split: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """(qrels, queries) of a BEIR split, or of a SQuAD folder's answerable questions (split ignored)."""
    if not is_squad(dataset):
        qrels = load_qrels(dataset / "qrels" / f"{split}.tsv")
        return qrels, load_queries(dataset, qrels)
    queries, paragraph_of = squad_questions(dataset)
    return {qid: {paragraph: 1} for qid, paragraph in paragraph_of.items()}, queries


def cached_vectors(model: EmbeddingModel, texts: list[str], name: str) -> np.ndarray:
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{digest}.npy"
    if path.exists():
        return np.load(path)
    started = time.monotonic()
    vectors = model.embed_documents(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(f"embedded {len(texts)} chunks for {name} in {time.monotonic() - started:.0f} s", flush=True)
    return vectors


def dense_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    scores = vectors @ query
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best]


def ranked_docs(fused: list[tuple[str, float]], chunk_doc: list[str]) -> list[str]:
    docs: list[str] = []
    for position, _ in fused[:TOP_CHUNKS]:
        doc = chunk_doc[int(position)]
        if doc not in docs:
            docs.append(doc)
    return docs


def scored_docs(fused: list[tuple[str, float]], chunk_doc: list[str], decay: float, candidates: int) -> list[str]:
    """Documents ranked by the service's document scoring (`group_by: document`)."""
    ranked = rank_documents(fused[:candidates], key=lambda position: chunk_doc[int(position)], decay=decay)
    return [document.key for document in ranked]


def evaluate(
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    rank: Callable[[str, str], list[str]],
) -> dict[str, float]:
    ndcg, recall, hit1, hit5 = [], [], [], []
    for qid, text in queries.items():
        docs = rank(qid, text)
        ndcg.append(ndcg_at_k(docs, qrels[qid]))
        recall.append(recall_at_k(docs, qrels[qid]))
        hit1.append(any(doc in qrels[qid] for doc in docs[:1]))
        hit5.append(any(doc in qrels[qid] for doc in docs[:5]))
    return {
        name: round(100 * float(np.mean(values)), 2)
        for name, values in (("ndcg@10", ndcg), ("recall@10", recall), ("hit@1", hit1), ("hit@5", hit5))
    }


GREEK_NAMES = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega"
GREEK = dict(zip("αβγδεζηθικλμνξοπρστυφχψω", GREEK_NAMES.split()))
_JOINED = re.compile(r"\b([A-Za-z]{1,6})-(\d{1,3}[A-Za-z]?)\b")


def normalise(text: str) -> str:
    """Scientific spellings BM25's tokenizer loses: Greek letters (TNF-α) and short
    letter-number names (IL-6, whose '6' a 2-character token pattern drops)."""
    text = "".join(f" {GREEK[c]} " if c in GREEK else c for c in text.replace("ς", "σ").lower())
    return _JOINED.sub(r"\1\2", text)


class RM3:
    """RM3-style pseudo-relevance feedback over a LexicalIndex: the query plus the terms that
    weigh most in its top BM25 chunks, each weighted by its share in them."""

    def __init__(self, index: LexicalIndex, texts: list[str], fb_docs: int = 10, fb_terms: int = 10, original_weight: float = 0.5):
        import bm25s

        self.index = index
        self.docs = [
            Counter(tokens)
            for tokens in bm25s.tokenize(texts, stopwords="en", stemmer=index._stemmer, return_ids=False, show_progress=False)
        ]
        self.fb_docs, self.fb_terms, self.original_weight = fb_docs, fb_terms, original_weight

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        first = self.index.scores(query)
        feedback = np.argsort(-first)[: self.fb_docs]
        feedback = [int(i) for i in feedback if first[i] > 0]
        if not feedback:
            return []
        weights = first[feedback] / first[feedback].sum()
        expansion: Counter = Counter()
        for weight, doc in zip(weights, feedback):
            length = sum(self.docs[doc].values()) or 1
            for term, count in self.docs[doc].items():
                expansion[term] += float(weight) * count / length
        terms = expansion.most_common(self.fb_terms)
        total = sum(w for _, w in terms)
        scores = self.original_weight * first / (first.max() or 1.0)
        for term, weight in terms:
            term_scores = np.asarray(self.index._bm25.get_scores([term]), dtype=np.float32)
            if term_scores.max() > 0:
                scores = scores + (1 - self.original_weight) * (weight / total) * term_scores / first.max()
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(i), float(scores[i])) for i in best if scores[i] > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="train", choices=["train", "dev", "test"])
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--variants", help="comma-separated parts of the variants' names to run (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset = args.dataset.resolve()
    settings = RAGSettings()
    chunker = RecursiveChunker(settings.chunking.chunk_size, settings.chunking.chunk_overlap)
    retrieval = settings.retrieval
    qrels, queries = load_judged_queries(dataset, args.split)
    corpus = load_corpus(dataset, chunker)
    split = "dev (answerable)" if is_squad(dataset) else args.split
    print(f"{dataset.name} {split}: {len(queries)} queries, {len(corpus.texts)} chunks", flush=True)

    model = EmbeddingModel.from_setting("auto", device="cpu")
    query_vectors = dict(zip(queries, model.embed_queries(list(queries.values()))))
    chunk_texts = {"plain": corpus.texts, "contextual": corpus.contextual}

    @functools.cache
    def dense(name: str) -> np.ndarray:  # embedded when a chosen variant first needs it
        return cached_vectors(model, chunk_texts[name], f"{dataset.name}-{name}")

    lexical = {
        name: LexicalIndex(texts, retrieval.bm25_k1, retrieval.bm25_b, retrieval.bm25_stemmer)
        for name, texts in (("plain", corpus.texts), ("contextual", corpus.contextual))
    }

    lexical["contextual+normalised"] = LexicalIndex(
        [normalise(t) for t in corpus.contextual], retrieval.bm25_k1, retrieval.bm25_b, retrieval.bm25_stemmer
    )
    rm3 = {name: RM3(lexical[name], texts) for name, texts in (("plain", corpus.texts), ("contextual", corpus.contextual))}

    def hybrid(
        dense_name: str,
        lexical_name: str,
        dense_weight: float = retrieval.dense_weight,
        short_dense_weight: float | None = None,  # for queries of at most retrieval.short_query_words words
        prf: bool = False,
        document_decay: float | None = None,
        document_candidates: int = TOP_CHUNKS,
    ) -> Callable[[str, str], list[str]]:
        def rank(qid: str, text: str) -> list[str]:
            weight = dense_weight
            if short_dense_weight is not None and len(text.split()) <= retrieval.short_query_words:
                weight = short_dense_weight
            dense_hits = [(str(i), s) for i, s in dense_top(dense(dense_name), query_vectors[qid], retrieval.fetch_k)]
            query = normalise(text) if lexical_name.endswith("normalised") else text
            lexical_top = rm3[lexical_name].top(query, retrieval.fetch_k) if prf else lexical[lexical_name].top(query, retrieval.fetch_k)
            lexical_hits = [(str(i), s) for i, s in lexical_top]
            fused = convex_fusion([(dense_hits, weight), (lexical_hits, 1 - weight)])
            if document_decay is not None:
                return scored_docs(fused, corpus.chunk_doc, document_decay, document_candidates)
            return ranked_docs(fused, corpus.chunk_doc)

        return rank

    variants = {
        "baseline (plain text, 0.6 / 0.4)": hybrid("plain", "plain"),
        "contextual BM25 only": hybrid("plain", "contextual"),
        "contextual dense only": hybrid("contextual", "plain"),
        "contextual both": hybrid("contextual", "contextual"),
        "dense only, plain": hybrid("plain", "plain", 1.0),
        "dense only, contextual": hybrid("contextual", "contextual", 1.0),
        "BM25 only, plain": hybrid("plain", "plain", 0.0),
        "BM25 only, contextual": hybrid("contextual", "contextual", 0.0),
        "contextual + query/text normalisation": hybrid("contextual", "contextual+normalised"),
        "contextual + RM3 (10 docs, 10 terms)": hybrid("contextual", "contextual", prf=True),
        "contextual, dense weight 0.5": hybrid("contextual", "contextual", 0.5),
        "contextual, dense weight 0.7": hybrid("contextual", "contextual", 0.7),
        "contextual, short queries 0.5 / 0.5 (the default fusion)": hybrid(
            "contextual", "contextual", short_dense_weight=retrieval.short_query_dense_weight
        ),
        "contextual, short queries dense 0.7": hybrid("contextual", "contextual", short_dense_weight=0.7),
        "shipped defaults (plain text, short queries 0.5 / 0.5)": hybrid(
            "plain", "plain", short_dense_weight=retrieval.short_query_dense_weight
        ),
        "shipped defaults + RM3": hybrid("plain", "plain", short_dense_weight=retrieval.short_query_dense_weight, prf=True),
        "contextual, short queries 0.5 / 0.5 + RM3": hybrid(
            "contextual", "contextual", short_dense_weight=retrieval.short_query_dense_weight, prf=True
        ),
        **{
            f"contextual, documents by decayed sum {decay} of top {n}": hybrid(
                "contextual", "contextual", document_decay=decay, document_candidates=n
            )
            for n in (30, 100)
            for decay in (0.1, 0.3, 0.5)
        },
    }
    shipped = (retrieval.short_query_dense_weight, retrieval.short_query_lexical_weight)
    if shipped[0] + shipped[1] != 1 or retrieval.dense_weight + retrieval.lexical_weight != 1:
        raise SystemExit("the variants assume fusion weights that sum to 1, as the shipped ones do")
    if args.variants:
        wanted = [part.strip() for part in args.variants.split(",")]
        variants = {name: rank for name, rank in variants.items() if any(part in name for part in wanted)}
    table = {}
    for name, rank in variants.items():
        table[name] = evaluate(qrels, queries, rank)
        print(f"{name:32s} {table[name]}", flush=True)
    if args.out:
        args.out.write_text(
            json.dumps({"dataset": dataset.name, "split": split, "queries": len(queries), "results": table}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
